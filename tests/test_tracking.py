"""Trackers: with `--report-to tensorboard` a run logs each stage's per-step training loss and learning rate, its dev
losses and each method's final metrics through accelerate's TensorBoard integration; nothing is logged by default."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import toy_rows, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.run.experiment import run


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series logged under `folder` (all event files), by tag."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return out


def test_a_run_reports_training_and_final_metrics_to_tensorboard(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    cfg = config.make(
        str(llama_dir),
        f"jsonl:{task}",
        methods=["ia2-sft"],
        n_train=4,
        n_test=10,
        seeds=[0],
        max_epochs=2,
        on_divergence="record",
        report_to=["tensorboard"],
    )
    assert config.key(cfg) == config.key(replace(cfg, runtime=replace(cfg.runtime, report_to=())))
    result = run(cfg, tmp_path / "out")
    scalars = _scalars(tmp_path / "out" / "trackers")
    logs = json.loads((tmp_path / "out" / "train_logs.json").read_text())[0]["stages"]
    steps = []
    for prefix, log in zip(("seed0/ia2:icl", "seed0/ia2:icl>ce:gold"), logs):
        assert len(scalars[f"{prefix}/train_loss"]) == log["steps"], "one training loss per optimizer step"
        assert all(v == pytest.approx(cfg.train.lr) for _, v in scalars[f"{prefix}/lr"])
        assert [v for _, v in scalars[f"{prefix}/dev_loss"]] == [
            pytest.approx(h["dev_loss"], rel=1e-6) for h in log["history"]
        ]
        assert {v for _, v in scalars[f"{prefix}/step"]} == set(range(0, log["steps"] + 1)), "the stage's own step"
        steps += [s for s, _ in scalars[f"{prefix}/train_loss"]]
    assert steps == sorted(set(steps)), "the logged step only grows, across stages (trackers drop earlier ones)"
    (row,) = result["rows"]
    ((step, accuracy),) = scalars[f"seed0/ia2-sft/{row['eval_task']}/accuracy"]
    assert step > max(steps) and accuracy == pytest.approx(row["accuracy"], rel=1e-6)


def test_nothing_is_tracked_by_default(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    argv = ["train", "--model", str(llama_dir), "--task", f"jsonl:{task}", "--max-epochs", "1", "--methods", "sft"]
    assert cli.main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "trackers").exists()
    assert cli.main([*argv, "--out", str(tmp_path / "tracked"), "--report-to", "tensorboard"]) == 0
    tags = _scalars(tmp_path / "trackers" / "tracked")
    assert "seed0/ce:gold/train_loss" in tags and "seed0/sft/dev_accuracy" in tags
