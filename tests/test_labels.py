"""Label sets whose labels share their first tokens: refused only when two labels are the same tokens, scored as
whole sequences, the ICL teacher answering with the label it scores highest, every method trained on all of a
label's tokens; label sets with distinct first tokens keep today's greedy T = 1 teacher. (Two labels that are the
same tokens are refused: tests/test_errors.py.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import ARCHS, every_method_on_every_arch, icl_prompts, toy_rows, write_jsonl
from ia2.data.prompts import Encoder
from ia2.data.tasks import load_task
from ia2.evaluation.scoring import score
from ia2.model.taps import SITES, Tap
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training.methods import METHODS

# The toy task's yes/no answers as two labels that share their first token " yes".
SHARED = {"no": "yes maybe", "yes": "yes please"}


def shared_rows(n: int, seed: int = 0) -> list[dict]:
    return [{**r, "answer": SHARED[r["answer"]]} for r in toy_rows(n, seed)]


@pytest.fixture(scope="module")
def shared_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("shared") / "shared.jsonl", shared_rows(40))


def encoder_for(path, tokenizer, model) -> tuple:
    task = load_task(f"jsonl:{path}")
    return task, Encoder(task, tokenizer, model.config.get_text_config().max_position_embeddings)


def test_labels_sharing_a_first_token_are_whole_labels(loaded, shared_jsonl, toy_jsonl):
    model, tok = loaded
    _, shared = encoder_for(shared_jsonl, tok, model)
    assert [len(ids) for ids in shared.label_ids] == [2, 2]
    assert shared.label_ids[0][0] == shared.label_ids[1][0] and shared.whole_labels
    assert shared.label_first() is None
    _, distinct = encoder_for(toy_jsonl, tok, model)
    assert not distinct.whole_labels and distinct.label_first() == [ids[0] for ids in distinct.label_ids]


def test_whole_label_scores_sum_or_average_the_label_tokens(loaded, shared_jsonl):
    model, tok = loaded
    task, encoder = encoder_for(shared_jsonl, tok, model)
    prompts = [encoder.prompt_ids(e) for e in task.examples[:5]]
    summed = score(model, prompts, encoder.label_ids, tok.pad_token_id, batch_size=2)
    mean = score(model, prompts, encoder.label_ids, tok.pad_token_id, batch_size=2, label_score="mean")
    np.testing.assert_allclose(mean.label_logp, summed.label_logp / 2, rtol=1e-6)
    for i, p in enumerate(prompts):  # one unbatched pass per label, by hand
        for c, ids in enumerate(encoder.label_ids):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + ids])).logits[0].float(), -1)
            by_hand = sum(logp[len(p) - 1 + t, token].item() for t, token in enumerate(ids))
            assert summed.label_logp[i, c] == pytest.approx(by_hand, abs=1e-4)


def test_the_teacher_answers_with_its_highest_scoring_label_and_keeps_every_label_position(loaded, shared_jsonl):
    model, tok = loaded
    task, encoder = encoder_for(shared_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, range(8), range(8), k=3)
    teacher = targets.collect(model, Tap(model), tok, prompts, CollectSettings(batch_size=3, choices=encoder.label_ids))
    scored = score(model, prompts, encoder.label_ids, tok.pad_token_id).label_logp
    assert teacher.tokens == [encoder.label_ids[c] for c in scored.argmax(axis=1)]
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert all(a.shape == (layers, 2, hidden) for a in teacher.acts)
    # the key names the choices (and their scoring), so these targets are never mistaken for greedy ones
    greedy = targets.key_fields({}, Tap(model), targets.CollectSettings())
    chosen = targets.key_fields({}, Tap(model), targets.CollectSettings(choices=((1, 2), (1, 3))))
    assert "choices" not in greedy and chosen["choices"] == [[1, 2], [1, 3]] and chosen["label_score"] == "sum"


def test_distinct_first_tokens_keep_the_greedy_first_token_teacher(loaded, toy_jsonl, tmp_path, monkeypatch):
    """The run's teacher for a task with distinct first tokens is the greedy T = 1 one, under the key of before."""
    model, tok = loaded
    task, encoder = encoder_for(toy_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, range(6), range(6), k=3)
    monkeypatch.setenv("IA2_CACHE", str(tmp_path))
    tap, fields = Tap(model), {"model": "m"}
    cached = targets.cached_collect(model, tap, tok, prompts, fields, CollectSettings(choices=None))
    greedy = targets.collect(model, tap, tok, prompts)
    assert cached.tokens == greedy.tokens and all(len(t) == 1 for t in cached.tokens)
    before = {**fields, "max_new_tokens": 1, "stop": "\n\n", "site": "attn"}
    if tap.module != SITES["attn"][0]:  # Gemma 3 reads the post-attention norm (keys since ia2 0.2)
        before["module"] = tap.module
    assert cached.key == targets.cache_key(before, prompts)


@pytest.fixture(scope="module")
def shared_runs(model_dirs, shared_jsonl, tmp_path_factory) -> dict:
    return every_method_on_every_arch(model_dirs, f"jsonl:{shared_jsonl}", tmp_path_factory, "shared")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_runs_on_labels_sharing_a_first_token(shared_runs, arch):
    """Each method gives finite label metrics (no first-token ones: they could not tell the labels apart), and every
    trained stage logs a finite dev loss."""
    result, out = shared_runs[arch]
    assert sorted(r["method"] for r in result["rows"]) == sorted(METHODS)
    for row in result["rows"]:
        assert all(math.isfinite(row[m]) for m in ("accuracy", "ece", "brier", "nll")), row["method"]
        assert "accuracy_vocab" not in row
    logs = json.loads((out / "train_logs.json").read_text())
    trained = [stage for entry in logs for stage in entry["stages"]]
    assert trained and all(math.isfinite(stage["best_dev_loss"]) for stage in trained)
    # how often the teacher's constrained answer is the gold label, recorded with every stage trained on it
    on_teacher = [stage for stage in trained if stage["stage"].endswith(":icl")]
    assert on_teacher and all(stage["teacher_agreement"] * 4 in (0, 1, 2, 3, 4) for stage in on_teacher)
    assert all("teacher_agreement" not in stage for stage in trained if stage["stage"].endswith(":gold"))
