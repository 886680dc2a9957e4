"""The packed-training benchmark runs its three sides on a tiny model and writes its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import packed


def test_packed_benchmark_reports_every_side(tmp_path):
    out = tmp_path / "report"
    argv = ["--device", "cpu", "--model", "tiny", "--n", "8", "--dev", "3", "--lrs", "1e-3", "3e-3", "--seeds", "2"]
    packed.main([*argv, "--steps", "3", "--alone", "2", "--profile", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    sides = report["sides"]
    assert [(s["adapters"], s["steps"]) for s in sides] == [(1, 3), (2, 3), (4, 3)]
    assert all(s["seconds"] > 0 and s["adapter_steps_per_s"] > 0 for s in sides)
    assert sides[0]["speedup"] == 1.0 and report["model"]["name"] == "tiny"
    assert "aten::" in report["t1_profile"]
    text = out.with_suffix(".md").read_text()
    assert "ia2 packed (4 adapters, batch 4 each)" in text and "T=1 teacher collection, profiled" in text
