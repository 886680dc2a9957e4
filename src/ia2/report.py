"""results.json, results.md (mean ± std per method) and reliability diagrams from a run's rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import metrics  # noqa: E402
from .paths import atomic_path, write_json, write_text  # noqa: E402

COLUMNS = (("accuracy", "accuracy"), ("ece", "ECE (15 equal-width)"), ("ece_equal_mass", "ECE (15 equal-mass)"),
           ("brier", "Brier"), ("nll", "NLL"), ("parse_failure_rate", "parse failures"), ("asim", "asim"))


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def methods_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def table(rows: list[dict]) -> str:
    """A markdown table, one line per method, mean ± std over seeds of each metric that any row has."""
    columns = [(key, label) for key, label in COLUMNS if any(r.get(key) is not None for r in rows)]
    lines = ["| method | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods_in_order(rows):
        mine = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join(_cell([r.get(key) for r in mine]) for key, _ in columns) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The run's tables: one per evaluation set (the task's own test set first, then out-of-distribution ones)."""
    cfg, rows = result["config"], result["rows"]
    seeds = sorted({r["seed"] for r in rows})
    text = (f"# {cfg['task']} on {cfg['model']}\n\nN = {cfg['n']} training examples, seeds {seeds}. "
            f"Mean ± std over seeds. Probabilities renormalised over the labels; ECE with 15 bins. "
            f"`icl` is evaluated with demonstrations from the training examples, every other method without.\n")
    for eval_task, majority in result["majority_accuracy"].items():
        mine = [r for r in rows if r["eval_task"] == eval_task]
        ood = "" if eval_task == cfg["task"] else " (out of distribution)"
        prior = "" if majority is None else f", majority-class accuracy {majority:.3f}"
        text += f"\n## {eval_task}{ood}\n\n{result['n_test'][eval_task]} test examples{prior}.\n\n" + table(mine) + "\n"
    return text


def plot_reliability(reliability: dict, path: Path) -> None:
    """One reliability curve per method (equal-width bins, seeds pooled), with the diagonal."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for method, per_seed in reliability.items():
        conf = np.concatenate([np.asarray(v["confidence"]) for v in per_seed.values()])
        correct = np.concatenate([np.asarray(v["correct"]) for v in per_seed.values()])
        bins = metrics.reliability(conf, correct)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=method)
    ax.set(xlabel="confidence (label-renormalised)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability, 15 equal-width bins")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_reports(result: dict, out: Path) -> str:
    """Write results.json, results.md, reliability.json and reliability.png; return the markdown."""
    reliability: dict = {}
    text = markdown(result)
    for row in result["rows"]:
        if row["eval_task"] == result["config"]["task"] and row["reliability"] is not None:
            reliability.setdefault(row["method"], {})[str(row["seed"])] = row["reliability"]
        del row["reliability"]
    write_json(out / "results.json", result)
    write_json(out / "reliability.json", reliability)
    if reliability:
        plot_reliability(reliability, out / "reliability.png")
    write_text(out / "results.md", text)
    return text
