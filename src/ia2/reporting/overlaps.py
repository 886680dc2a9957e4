"""LoRA subspace overlaps between adapters of the same seed (the pairs the method declarations compare), and between
one method's adapters of consecutive seeds (how much two runs of the same method share, the baseline that gives a
cross-method overlap its meaning), recorded in overlaps.json so that a report regenerated after the adapters are
deleted still shows them, with their figure."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ia2.evaluation import metrics
from ia2.paths import write_json
from ia2.reporting import analysis, plots
from ia2.training.methods import comparisons

OVERLAPS = "overlaps.json"


def _adapter_dir(row: dict) -> Path:
    return Path(row["run"]) / "adapters" / f"seed{row['seed']}" / row["method"]


def _pair_key(folder: Path, a: Path, b: Path) -> str:
    return " | ".join(str(d.resolve().relative_to(folder.resolve())) for d in (a, b))


def _pair_overlap(a: Path, b: Path) -> dict | None:
    """One pair's record: its base model, mean overlap and the random-subspace level, or why it was skipped; None
    while an adapter is not on disk."""
    if not all((d / "adapter_config.json").exists() for d in (a, b)):
        return None
    config = json.loads((a / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        return {"skipped": "not LoRA"}
    try:
        result = analysis.adapter_overlap(a, b)
    except analysis.EmptySubspace:
        return {"skipped": "untrained"}
    chance = float(np.mean([_random(m["dim"], m["rank"]) for m in result["modules"]]))
    return {"model": config["base_model_name_or_path"], "mean": result["mean"], "random": chance}


def _compared() -> list[str]:
    """The methods some declared pair compares, in declaration order: those whose seed-to-seed overlap is reported."""
    return list(dict.fromkeys(name for pair in comparisons() for name in pair))


def _same_seed_pairs(adapters: dict[tuple, dict[str, set[Path]]]) -> Iterator[tuple[Path, Path]]:
    """Every declared (method, tested against) pair of one (condition, seed), for every combination of tuned values."""
    for methods in adapters.values():
        for b, a in comparisons():
            for first in sorted(methods.get(a, ())):
                for second in sorted(methods.get(b, ())):
                    yield first, second


def _next_seed_pairs(rows: list[dict]) -> Iterator[tuple[Path, Path]]:
    """One method's adapters of consecutive seeds of the same run (same condition and tuned values)."""
    seeds: dict[tuple[str, str], set[int]] = defaultdict(set)
    compared = set(_compared())
    for r in rows:
        if r["method"] in compared:
            seeds[r["run"], r["method"]].add(r["seed"])
    for (run, method), found in seeds.items():
        order = sorted(found)
        for s1, s2 in zip(order, order[1:]):
            yield (
                _adapter_dir({"run": run, "seed": s1, "method": method}),
                _adapter_dir({"run": run, "seed": s2, "method": method}),
            )


def overlap_records(rows: list[dict], folder: Path) -> dict[str, dict]:
    """The overlap of every tested pair of one (condition, seed)'s adapters, for every combination of tuned values,
    and of each compared method's adapters of consecutive seeds, read from `overlaps.json` or measured now where both
    adapters are on disk (and then added to it). A sweep's committed run folders keep rows but not adapters, so
    overlaps measured while the adapters existed stay reported whichever tuned values the selection picks later."""
    path = folder / OVERLAPS
    cache = json.loads(path.read_text()) if path.exists() else {}
    found: dict[tuple, dict[str, set[Path]]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        found[r["condition"], r["seed"]][r["method"]].add(_adapter_dir(r))
    added = 0
    for first, second in [*_same_seed_pairs(found), *_next_seed_pairs(rows)]:
        key = _pair_key(folder, first, second)
        record = cache.get(key) or _pair_overlap(first, second)
        if record is not None and key not in cache:
            cache[key], added = record, added + 1
    if added:
        write_json(path, dict(sorted(cache.items())))
    return cache


def _reported_pairs(kept: list[dict], folder: Path) -> Iterator[tuple[str, str, str]]:
    """(condition, label, record key) of each pair of the reported (dev-selected) runs' adapters: the declared pairs
    within a seed, then each compared method against itself on the next seed."""
    chosen: dict[tuple, dict[str, Path]] = defaultdict(dict)  # each method's adapter from its own selected run
    for r in kept:
        chosen[r["condition"], r["seed"]][r["method"]] = _adapter_dir(r)
    for (condition, _), adapters in chosen.items():
        for b, a in comparisons():
            if a in adapters and b in adapters:
                yield condition, f"{a} vs {b}", _pair_key(folder, adapters[a], adapters[b])
    for condition in dict.fromkeys(c for c, _ in chosen):
        for method in _compared():
            seeds = sorted(seed for c, seed in chosen if c == condition and method in chosen[c, seed])
            for s1, s2 in zip(seeds, seeds[1:]):
                first, second = chosen[condition, s1][method], chosen[condition, s2][method]
                yield condition, f"{method} vs {method}, next seed", _pair_key(folder, first, second)


def section(kept: list[dict], folder: Path, figures: Path, records: dict[str, dict], names: dict[str, str]) -> str:
    """LoRA subspace overlap between methods trained on the same seed of the reported (dev-selected) runs, and of each
    method with itself across seeds, per base model and variant (`names`: each condition's variant name), beside the
    overlap of random subspaces of the same dimensions (mean over modules)."""
    overlaps: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    baselines: dict[str, float] = {}
    skipped = {"untrained": 0, "not LoRA": 0}
    for condition, label, key in _reported_pairs(kept, folder):
        record = records.get(key)
        if record is None:
            continue
        if "skipped" in record:
            skipped[record["skipped"]] += 1
            continue
        overlaps[record["model"], names[condition]][label].append(record["mean"])
        baselines.setdefault(record["model"], record["random"])
    text = ""
    for i, ((model, variant), pairs) in enumerate(sorted(overlaps.items())):
        path = figures / f"subspace_overlap__{i}.png"
        plots.plot_overlap(pairs, baselines[model], path)
        lines = "\n".join(
            f"| {pair} | {np.mean(v):.3f} ± {metrics.sample_std(v):.3f} | {len(v)} |" for pair, v in pairs.items()
        )
        text += (
            f"\n## LoRA subspace overlap, {Path(model).name}{', ' + variant if variant else ''}\n\n"
            "(1/r)·‖U₁ᵀU₂‖²_F of the update's column space, "
            f"mean over modules; random subspaces of the same sizes: {baselines[model]:.3f}. "
            f"`{path.relative_to(folder)}`"
            f"\n\n| pair | overlap | adapters |\n|---|---|---|\n{lines}\n"
        )
    if skipped["untrained"]:
        text += (
            f"\n{skipped['untrained']} pairs skipped: an adapter kept its initial state (no dev improvement), so it "
            "has no update.\n"
        )
    if skipped["not LoRA"]:
        text += f"\n{skipped['not LoRA']} pairs skipped: subspace overlap is defined for LoRA adapters only.\n"
    return text


@functools.cache
def _random(dim: int, rank: int) -> float:
    return analysis.random_overlap(dim, rank, samples=50)
