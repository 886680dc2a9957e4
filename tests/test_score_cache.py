"""The base model's score cache: its key moves with everything that changes scores, an entry reads back the very
scores it stored, and an entry that is damaged in any way is scored again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import overwrite_in_place
from ia2.evaluation import cache, scoring
from ia2.model import loading
from ia2.model.taps import Tap
from ia2.paths import cache_root

PROMPTS = [[5, 6, 7, 8], [9, 10, 11]]
LABELS = [[12], [13]]
SETTINGS = {"pad_id": 0, "batch_size": 2, "label_score": "sum", "compile": "none", "fsdp": False}


@pytest.fixture
def base(llama_dir):
    model, _ = loading.load(str(llama_dir))
    return model, Tap(model)


def _score(model, tap, calls: list) -> scoring.Scores:
    calls.append(1)
    return scoring.score(model, PROMPTS, LABELS, 0, tap, batch_size=2)


def test_the_key_moves_with_everything_that_changes_scores(base):
    model, tap = base
    key = cache.scores_key(model, "fp", tap, PROMPTS, LABELS, SETTINGS)
    assert key == cache.scores_key(model, "fp", Tap(model), [list(p) for p in PROMPTS], LABELS, dict(SETTINGS))
    changed = [
        cache.scores_key(model, "other weights", tap, PROMPTS, LABELS, SETTINGS),
        cache.scores_key(model, "fp", Tap(model, "mlp"), PROMPTS, LABELS, SETTINGS),
        cache.scores_key(model, "fp", Tap(model, layers=[0]), PROMPTS, LABELS, SETTINGS),
        cache.scores_key(model, "fp", None, PROMPTS, LABELS, SETTINGS),
        cache.scores_key(model, "fp", tap, [PROMPTS[0], [9, 10, 12]], LABELS, SETTINGS),
        cache.scores_key(model, "fp", tap, PROMPTS, [[13], [12]], SETTINGS),
        *(cache.scores_key(model, "fp", tap, PROMPTS, LABELS, {**SETTINGS, k: v}) for k, v in (
            ("pad_id", 1), ("batch_size", 1), ("label_score", "mean"), ("compile", "layers"), ("fsdp", True),
        )),
        cache.scores_key(model.to(torch.bfloat16), "fp", tap, PROMPTS, LABELS, SETTINGS),
    ]  # fmt: skip
    assert len({key, *changed}) == len(changed) + 1


def test_an_entry_reads_back_what_it_stored_and_a_damaged_one_is_scored_again(base):
    model, tap = base
    key, calls = cache.scores_key(model, "fp", tap, PROMPTS, LABELS, SETTINGS), []
    first = cache.cached_scores(key, lambda: _score(model, tap, calls))
    again = cache.cached_scores(key, lambda: _score(model, tap, calls))
    assert len(calls) == 1
    for name in cache.ARRAYS:
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
        assert getattr(again, name).dtype == getattr(first, name).dtype
    assert torch.equal(again.acts, first.acts)
    path = cache_root() / "scores" / f"{key}.safetensors"
    overwrite_in_place(path, count=64)  # same size, header intact: only the checksum tells
    cache.cached_scores(key, lambda: _score(model, tap, calls))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    cache.cached_scores(key, lambda: _score(model, tap, calls))
    assert len(calls) == 3
    assert torch.equal(cache.cached_scores(key, lambda: _score(model, tap, calls)).acts, first.acts)
    assert len(calls) == 3, "the rescored entry replaced the damaged one"


def test_an_entry_without_activations_serves_only_who_needs_none(base):
    model, tap = base
    key, calls = cache.scores_key(model, "fp", tap, PROMPTS, LABELS, SETTINGS), []
    assert cache.cached_scores(key, lambda: _score(model, tap, calls), keep_acts=False).acts is None
    assert cache.cached_scores(key, lambda: _score(model, tap, calls), keep_acts=False).acts is None
    assert len(calls) == 1
    assert cache.cached_scores(key, lambda: _score(model, tap, calls)).acts is not None
    assert len(calls) == 2
