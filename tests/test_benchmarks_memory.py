"""benchmarks/memory.py: the sharded-target memory benchmark reads back exactly what it wrote, a few shards at a
time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory  # noqa: E402


def test_measure_reads_every_example_once_with_few_shards_open(tmp_path):
    shape, n = (3, 5, 16), 150
    got = memory.measure(tmp_path / "store", n, shape, 4, torch.bfloat16)
    # the benchmark sums each example's last-position, first-channel value over layers: (i % 7) per layer
    assert got["checksum"] == sum(shape[0] * (i % 7) for i in range(n))
    assert got["shards"] == 3 and got["peak_open"] <= got["max_open"] == 4
    assert got["per_example_mib"] * (1 << 20) >= shape[0] * shape[1] * shape[2] * 2
    assert got["peak_rss_gib"] > 0 and got["read_examples_per_s"] > 0


def test_script_writes_its_report(tmp_path, monkeypatch):
    out = tmp_path / "mem"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "memory.py",
            "--n",
            "8,16",
            "--layers",
            "2",
            "--t",
            "3",
            "--hidden",
            "8",
            "--dir",
            str(tmp_path),
            "--out",
            str(out),
        ],
    )
    memory.main()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["n"] for r in rows] == [8, 16]
    assert "| 16 |" in out.with_suffix(".md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem.json", "mem.md"], "stores are deleted"
