"""Generative (multi-token) tasks end to end on a tiny model: generation cut at the stop rule, parsed scoring with
parse failures counted wrong, multi-token teacher targets, SFT on gold answers that end with the stop string."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from conftest import ADJECTIVES, ANIMALS, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.data.prompts import Encoder
from ia2.errors import IA2Error
from ia2.evaluation import scoring
from ia2.model import loading
from ia2.reporting import report
from ia2.run.context import declared
from ia2.teacher import targets


def copy_rows(n: int = 40) -> list[dict]:
    """'is the <animal> <adjective>?' → '<animal> <adjective>': a free-text answer of two words."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        animal, adjective = rng.choice(ANIMALS), rng.choice(ADJECTIVES)
        rows.append({"question": f"is the {animal} {adjective}?", "answer": f"{animal} {adjective}"})
    return rows


def test_generation_metrics_count_parse_failures_as_wrong():
    got = scoring.generation_metrics(
        ["#### cat", "no answer here", "#### dog"], ["x\n#### cat", "#### cow", "#### cow"], "sciq"
    )
    assert got == {"accuracy": pytest.approx(1 / 3), "parse_failure_rate": pytest.approx(1 / 3)}
    with pytest.raises(IA2Error, match="gold answer has no parsable answer"):
        scoring.generation_metrics(["#### cat"], ["no marker"], "sciq")


def test_gold_answers_end_with_the_stop_string(tmp_path, llama_dir):
    task_path = write_jsonl(tmp_path / "copy.jsonl", copy_rows())
    cfg = config.make(str(llama_dir), f"jsonl:{task_path}", methods=["sft"], parser="text", max_new_tokens=6)
    task = declared(cfg.data.task, cfg)
    assert task.generative and task.parser == "text" and task.max_new_tokens == 6
    _, tok = loading.load(str(llama_dir))
    prompted = Encoder(task, tok, 512).encode(task.examples[0])
    assert prompted.label == -1
    assert tok.decode(prompted.answer) == " " + task.examples[0].answer + "\n\n"
    with pytest.raises(IA2Error, match=r"give max_new_tokens \(--max-new-tokens\)"):
        declared(cfg.data.task, config.make("m", cfg.data.task, methods=["sft"], parser="text"))


def test_generative_run_end_to_end(tmp_path, llama_dir):
    task_path = write_jsonl(tmp_path / "copy.jsonl", copy_rows())
    out = tmp_path / "out"
    args = [
        "run",
        "--model",
        str(llama_dir),
        "--task",
        f"jsonl:{task_path}",
        "--parser",
        "text",
        "--max-new-tokens",
        "5",
        "--methods",
        "zero-shot,icl,sft,ia2,ia2-sft",
        "--n-train",
        "4",
        "--seeds",
        "0",
        "--n-test",
        "8",
        "--max-epochs",
        "3",
        "--on-divergence",
        "record",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["ia2", "ia2-sft", "icl", "sft", "zero-shot"]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["parse_failure_rate"] <= 1
        assert r.get("ece") is None and r.get("reliability") is None, "no answer distribution to calibrate"
        assert r["dev_accuracy"] is None if r["method"] not in ("icl", "zero-shot") else "dev_accuracy" not in r
        assert r["asim"] is None if r["method"] == "icl" else -1 <= r["asim"] <= 1
    logs = json.loads((out / "train_logs.json").read_text())
    ia2_stage = next(s for entry in logs if entry["method"] == "ia2" for s in entry["stages"])
    assert ia2_stage["stage"] == "ia2:icl" and ia2_stage["best_dev_loss"] < ia2_stage["history"][0]["dev_loss"]
    assert "parse failures" in (out / "results.md").read_text()
    text = report.write(out)
    assert "IA2 → SFT" in text and not list(out.glob("figures/reliability__*")), "reported without reliability plots"
    with pytest.raises(IA2Error, match="no dev accuracy.*select on dev_loss"):
        report.write(out, "dev_accuracy")
    (target_file,) = (Path(os.environ["IA2_CACHE"]) / "targets").glob("*.safetensors")
    teacher = targets.load(target_file)
    _, tok = loading.load(str(llama_dir))
    assert len(teacher.tokens) == 4 + 2 and all(1 <= len(t) <= 5 for t in teacher.tokens)
    assert all(a.shape[1] == len(t) for a, t in zip(teacher.acts, teacher.tokens)), "one activation per answer token"
    for t in teacher.tokens:
        text = tok.decode(t)
        assert "\n\n" not in text[:-2], "answers are cut at the first stop string"
