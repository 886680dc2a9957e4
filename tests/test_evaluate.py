"""Scoring labels after prompts (single- and multi-token labels) against unpadded single-example runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import full_attn_outputs, toy_rows, write_jsonl
from ia2.data.prompts import Encoder, draw_demos
from ia2.data.tasks import load_task
from ia2.evaluation import scoring
from ia2.model.taps import Tap


def _multi_token_task(tmp_path, tok):
    rows = toy_rows(20)
    for r in rows:
        r["answer"] = "maybe long" if r["answer"] == "yes" else "no"
    task = load_task(f"jsonl:{write_jsonl(tmp_path / 'multi.jsonl', rows)}")
    encoder = Encoder(task, tok, 512)
    assert [len(ids) for ids in encoder.label_ids] == [2, 1]  # sorted labels: "maybe long", "no"
    return task, encoder


def _check_scores_against_unpadded_runs(model, tok, prompts, label_ids, batch_size):
    scores = scoring.score(model, prompts, label_ids, tok.pad_token_id, Tap(model), batch_size=batch_size)
    assert scores.label_logp.shape == (len(prompts), len(label_ids))
    assert scores.acts.shape == (len(prompts), model.config.num_hidden_layers, model.config.hidden_size)
    for i, p in enumerate(prompts):
        acts, logits = full_attn_outputs(model, p)
        logp = torch.log_softmax(logits[-1].double(), -1)
        torch.testing.assert_close(scores.acts[i], acts[:, -1], rtol=1e-5, atol=1e-5)
        assert scores.vocab_top_token[i] == int(logp.argmax())
        np.testing.assert_allclose(scores.vocab_top_prob[i], float(logp.max().exp()), rtol=1e-4)
        for c, ids in enumerate(label_ids):
            np.testing.assert_allclose(scores.vocab_label_prob[i, c], float(logp[ids[0]].exp()), rtol=1e-4)
            # Σ_t log p(label_t | prompt, label_<t), from an unpadded run over prompt ⊕ label
            _, full = full_attn_outputs(model, p + ids)
            seq_logp = torch.log_softmax(full.double(), -1)
            want = sum(float(seq_logp[len(p) - 1 + t, tok_id]) for t, tok_id in enumerate(ids))
            np.testing.assert_allclose(scores.label_logp[i, c], want, rtol=1e-4, atol=1e-5)


def test_score_matches_unpadded_runs(loaded, tmp_path):
    model, tok = loaded
    task, encoder = _multi_token_task(tmp_path, tok)
    prompts = [encoder.encode(e).prompt for e in task.examples[:7]]
    assert len({len(p) for p in prompts}) > 1
    _check_scores_against_unpadded_runs(model, tok, prompts, encoder.label_ids, batch_size=3)


@pytest.mark.parametrize("labels", ["single-token", "multi-token"])
def test_score_with_shared_demonstrations_matches_unpadded_runs(loaded, tmp_path, labels):
    """ICL evaluation prompts share their demonstrations (a long common token prefix, which score() runs once and
    reuses for single-token labels); every score must still equal the one from running that prompt alone, also on
    Gemma 3's sliding-window layer (window 16, shorter than the prefix)."""
    model, tok = loaded
    if labels == "multi-token":
        task, encoder = _multi_token_task(tmp_path, tok)
    else:
        task = load_task(f"jsonl:{write_jsonl(tmp_path / 'single.jsonl', toy_rows(20))}")
        encoder = Encoder(task, tok, 512)
    demos = [task.examples[i] for i in (10, 11, 12, 13, 14)]
    prompts = [encoder.encode(e, demos).prompt for e in task.examples[:7]]
    assert len({len(p) for p in prompts}) > 1
    shared = next(i for i in range(min(map(len, prompts))) if len({p[i] for p in prompts}) > 1)
    assert shared >= 48, "the demonstrations should make a long shared prefix"
    _check_scores_against_unpadded_runs(model, tok, prompts, encoder.label_ids, batch_size=3)
    _check_scores_against_unpadded_runs(model, tok, prompts[:1] * 2, encoder.label_ids, batch_size=2)


def test_common_prefix_leaves_every_prompt_a_token():
    assert scoring.common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert scoring.common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert scoring.common_prefix([[7], [7, 8]]) == 0


def test_encoder_prompt_layout_and_answer_ids(loaded, toy_jsonl):
    model, tok = loaded
    task = load_task(f"jsonl:{toy_jsonl}")
    encoder = Encoder(task, tok, 512)
    ex = task.examples
    demos = [ex[1], ex[2]]
    text = encoder.text(ex[0], demos)
    assert text == (
        f"Question: {ex[1].question}\nAnswer: {ex[1].answer}\n\n"
        f"Question: {ex[2].question}\nAnswer: {ex[2].answer}\n\n"
        f"Question: {ex[0].question}\nAnswer:"
    )
    enc = encoder.encode(ex[0], demos)
    assert enc.prompt == tok(text)["input_ids"]
    assert enc.prompt + enc.answer == tok(text + " " + ex[0].answer)["input_ids"]
    assert enc.label == task.labels.index(ex[0].answer)
    assert tok.decode(enc.answer) == " " + ex[0].answer
    assert encoder.label_ids == [
        tok(" no", add_special_tokens=False)["input_ids"],
        tok(" yes", add_special_tokens=False)["input_ids"],
    ]


def test_draw_demos_leave_one_out():
    import random

    pool = list(range(10))
    for seed in range(5):
        got = draw_demos(pool, 9, random.Random(seed), exclude=3)
        assert sorted(got) == [i for i in pool if i != 3]
    assert draw_demos(pool, 4, random.Random(1)) == draw_demos(pool, 4, random.Random(1))
    import pytest

    from ia2.errors import IA2Error

    with pytest.raises(IA2Error):
        draw_demos(pool, 10, random.Random(0), exclude=3)
