"""Figures: a metric against N, per-layer similarity to ICL, reliability diagrams, LoRA subspace overlap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ia2.errors import IA2Error
from ia2.evaluation import metrics
from ia2.paths import atomic_path
from ia2.training.methods import display


def _save(fig: Figure, path: Path) -> None:
    """Write the figure atomically; the format follows the file suffix."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def _require(items: object, what: str) -> None:
    if not items:
        raise IA2Error(f"nothing to plot: no {what}")


def _one_setting(cells: list[dict]) -> tuple[str, str, str]:
    """The single (model, task, eval_task) of the cells; several would mix lines of different experiments."""
    settings = sorted({(c["model"], c["task"], c["eval_task"]) for c in cells})
    if len(settings) > 1:
        raise IA2Error(f"cells span {len(settings)} (model, task, eval_task) settings; plot one at a time")
    if len({(c["method"], c["n_train"]) for c in cells}) < len(cells):
        raise IA2Error("two cells for the same (method, N)")
    return settings[0]


def plot_accuracy_vs_n(cells: Sequence[dict], path: Path, metric: str = "accuracy") -> None:
    """`metric` mean ± std over seeds against N (log2 axis), a line per method, for one (model, task, eval_task)."""
    cells = [c for c in cells if c.get(f"{metric}_mean") is not None]
    _require(cells, f"cells with {metric}_mean")
    model, task, eval_task = _one_setting(cells)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in dict.fromkeys(c["method"] for c in cells):
        mine = sorted((c for c in cells if c["method"] == method), key=lambda c: c["n_train"])
        ax.errorbar(
            [c["n_train"] for c in mine],
            [c[f"{metric}_mean"] for c in mine],
            yerr=[c.get(f"{metric}_std") or 0.0 for c in mine],
            marker="o",
            capsize=3,
            label=display(method),
        )
    ns = sorted({c["n_train"] for c in cells})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set(
        xlabel="N (training examples)",
        ylabel=metric,
        title=f"{model}: {task}" + ("" if eval_task == task else f" → {eval_task} (OOD)"),
    )
    ax.legend()
    _save(fig, path)


def plot_layer_similarity(agg: Mapping[str, dict], path: Path) -> None:
    """Per-layer cosine similarity to ICL activations, a line per method with its std shaded (from layer_similarity)."""
    _require(agg, "methods with per-layer similarities")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, stats in agg.items():
        mean, std = np.asarray(stats["mean"], dtype=float), np.asarray(stats["std"], dtype=float)
        _require(len(mean), f"layers for {method}")
        layers = np.arange(len(mean))
        (line,) = ax.plot(layers, mean, marker=".", label=display(method))
        ax.fill_between(layers, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="layer", ylabel="cosine similarity to ICL activations")
    ax.legend()
    _save(fig, path)


def plot_reliability(per_method: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Reliability curves (15 equal-width bins) per method over the diagonal, with confidence counts underneath."""
    _require(per_method, "methods")
    fig = Figure(figsize=(5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for method, (confidence, correct) in per_method.items():
        confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
        _require(len(confidence), f"predictions for {method}")
        if confidence.shape != correct.shape:
            raise IA2Error(f"{method}: {len(confidence)} confidences but {len(correct)} correctness values")
        bins = metrics.reliability(confidence, correct, metrics.N_BINS, "width")
        (line,) = top.plot(
            [b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=display(method)
        )
        bottom.hist(confidence, bins=np.linspace(0, 1, metrics.N_BINS + 1), histtype="step", color=line.get_color())
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability, {metrics.N_BINS} equal-width bins")
    top.legend()
    bottom.set(xlabel="confidence", ylabel="count")
    _save(fig, path)


def plot_overlap(overlaps: Mapping[str, Sequence[float]], baseline: float, path: Path) -> None:
    """Mean ± std subspace overlap per method pair (points: runs), a method against itself on another seed in its
    own colour, with the random-subspace level as a line."""
    _require(overlaps, "method pairs")
    fig = Figure(figsize=(max(4, 1.2 * len(overlaps)), 4))
    ax = fig.subplots()
    for i, (pair, values) in enumerate(overlaps.items()):
        values = np.asarray(values, dtype=float)
        _require(len(values), f"overlaps for {pair}")
        colour = "C1" if "next seed" in pair else "C0"
        ax.bar(i, values.mean(), yerr=metrics.sample_std(values), capsize=4, color=colour, alpha=0.8)
        ax.scatter(np.full(len(values), i), values, color="black", s=8, zorder=3)
    ax.axhline(baseline, color="C3", linestyle="--", label=f"random subspaces ({baseline:.3f})")
    ax.set_xticks(range(len(overlaps)), list(overlaps), rotation=20, ha="right")
    ax.set(ylabel="subspace overlap (1/r)·‖U₁ᵀU₂‖²", ylim=(0, 1))
    ax.legend()
    _save(fig, path)
