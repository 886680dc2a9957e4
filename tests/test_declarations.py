"""Losses and methods are declarations: a loss declared in user code and a method added as one line of the table
train end to end, collection asks the loss what teacher data it needs, and reports name the method from the table."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import toy_rows, write_jsonl
from ia2 import config
from ia2.errors import IA2Error
from ia2.registry import LOSSES, METHODS
from ia2.run.experiment import run
from ia2.teacher import targets
from ia2.training import methods
from ia2.training.losses import Loss, LossInputs
from ia2.training.methods import Method, Stage


def _l1(x: LossInputs) -> torch.Tensor:
    """Σ_layers mean |a − a*| over the answer positions: an activation loss the library does not ship."""
    weights = x.mask[:, None, :, None].float()
    per_layer = ((x.acts.float() - x.teacher_acts).abs() * weights).sum(dim=(0, 2, 3))
    return (per_layer / (x.mask.sum() * x.acts.shape[-1])).sum()


def test_a_loss_and_a_method_declared_in_user_code_train_end_to_end(tmp_path, llama_dir, monkeypatch, declare):
    declare(LOSSES, "l1", Loss(_l1, needs_acts=True))
    declare(METHODS, "ia2-l1", Method("ia2-l1", "IA2 (L1)", (Stage("l1", "icl"),), tested_against=("sft",)))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    cfg = config.make(
        str(llama_dir), f"jsonl:{task}", methods=["ia2-l1"], n_train=4, n_test=10, seeds=[0], max_epochs=4, lr=1e-2
    )
    result = run(cfg, tmp_path / "out")
    (row,) = result["rows"]
    assert row["method"] == "ia2-l1" and 0 <= row["accuracy"] <= 1
    (log,) = json.loads((tmp_path / "out" / "train_logs.json").read_text())[0]["stages"]
    assert log["stage"] == "l1:icl" and log["best_dev_loss"] < log["history"][0]["dev_loss"]
    assert "| ia2-l1 |" in (tmp_path / "out" / "results.md").read_text()
    assert methods.display("ia2-l1") == "IA2 (L1)"
    assert ("ia2-l1", "sft") in methods.comparisons(), "the report's analyses read the declaration when they run"
    assert "ia2-l1" in config.paths()["methods"].metadata["choices"](), "and so do the settings' allowed values"


def test_collection_asks_the_losses_whether_to_keep_distributions(tmp_path, llama_dir, monkeypatch, declare):
    """Teacher distributions are collected for a run only when one of its stages' losses declares it needs them:
    here a user-declared loss that reads them, against the ia2 loss that reads activations only."""
    kept = []

    def spy(*args, **kwargs) -> targets.Targets:
        got = real(*args, **kwargs)
        kept.append(None if got.top_logp is None else got.top_logp[0].shape[-1])
        return got

    real = targets.cached_collect
    monkeypatch.setattr(targets, "cached_collect", spy)
    declare(LOSSES, "kl", Loss(LOSSES["soft"].fn, needs_distribution=True))
    declare(METHODS, "kl", Method("kl", "KL", (Stage("kl", "icl"),)))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    for name in ("ia2", "kl"):
        cfg = config.make(
            str(llama_dir), f"jsonl:{task}", methods=[name], n_train=4, n_test=10, seeds=[0], max_steps=1, soft_top_k=3
        )
        run(cfg, tmp_path / name)
    assert kept == [None, 3], "no distribution for ia2; the top 3 next-token log-probs for the loss that reads them"


def test_a_stage_must_name_a_declared_loss():
    with pytest.raises(IA2Error, match="stage loss 'l2' is not declared"):
        Stage("l2", "icl")
