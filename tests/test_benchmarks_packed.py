"""The packed-training benchmark runs its three sides on a tiny model and writes its report; the pack check compares
a pack with its adapters alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pack_check
import packed


def test_packed_benchmark_reports_every_side(tmp_path):
    out = tmp_path / "report"
    argv = ["--device", "cpu", "--model", "tiny", "--n", "8", "--dev", "3", "--lrs", "1e-3", "3e-3", "--seeds", "2"]
    profile = ["--profile", "--profile-prompts", "8", "--profile-batch", "4"]
    packed.main([*argv, "--steps", "4", "--alone", "2", *profile, "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    sides = report["sides"]
    assert [(s["adapters"], s["steps"]) for s in sides] == [(1, 4), (2, 4), (4, 4)]
    assert all(s["seconds"] > 0 and s["adapter_steps_per_s"] > 0 and s["step_ms"] > 0 for s in sides)
    assert all(s["setup_s"] >= 0 for s in sides) and sides[0]["speedup"] == 1.0
    info = report["info"]
    assert info["model"]["name"] == "tiny" and info["device"] == "cpu" and info["settings"]["steps"] == 4
    assert {"torch", "transformers", "peft", "ia2_commit"} <= info["versions"].keys()
    assert "aten::" in report["t1_profile"]["table"] and report["t1_profile"]["prompts"] == 8
    text = out.with_suffix(".md").read_text()
    assert "ia2 packed (4 adapters, batch 4 each)" in text and "T=1 teacher collection, profiled" in text
    assert "a packed step costs" in text


def test_pack_check_compares_a_pack_with_its_adapters_alone(tmp_path, capsys):
    out = tmp_path / "check"
    pack_check.main(["--device", "cpu", "--model", "tiny", "--steps", "4", "--n", "8", "--dev", "3", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["adapters"]
    assert len(rows) == 3 and all(r["steps"][0] == r["steps"][1] for r in rows)
    assert max(r["max_weight_diff"] for r in rows) < 1e-5
    assert "pack of 3 against alone, float32" in capsys.readouterr().out
