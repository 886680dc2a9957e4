"""results.json, results.md (mean ± std per method) and reliability diagrams from a run's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ia2.evaluation import metrics
from ia2.paths import write_json, write_text
from ia2.reporting import plots

COLUMNS = (
    ("accuracy", "accuracy"),
    ("ece", "ECE (15 equal-width)"),
    ("ece_equal_mass", "ECE (15 equal-mass)"),
    ("brier", "Brier"),
    ("nll", "NLL"),
    ("parse_failure_rate", "parse failures"),
    ("asim", "asim"),
)


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {metrics.sample_std(values):.3f}"


def methods_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


SCORED = {"sum": "summed", "mean": "averaged (length-normalised)"}


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
    text = (
        f"# {cfg['data']['task']} on {cfg['model']}\n\nN = {cfg['data']['n_train']} training examples, seeds {seeds}. "
        f"Mean ± sample std (ddof 1) over seeds. Labels scored by their log-probability "
        f"{SCORED[cfg['data'].get('label_score', 'sum')]} over their tokens, renormalised over the labels; ECE with "
        "15 bins. "
        f"`icl` is evaluated with demonstrations from the training examples, every other method without.\n"
    )
    for eval_task, majority in result["majority_accuracy"].items():
        mine = [r for r in rows if r["eval_task"] == eval_task]
        ood = "" if eval_task == cfg["data"]["task"] else " (out of distribution)"
        prior = "" if majority is None else f", majority-class accuracy {majority:.3f}"
        text += f"\n## {eval_task}{ood}\n\n{result['n_test'][eval_task]} test examples{prior}.\n\n" + table(mine) + "\n"
        text += _diverged(mine)
    return text


def _diverged(rows: list[dict]) -> str:
    """A note naming the rows of adapters whose training diverged (kept by --on-divergence record), or nothing."""
    found = [f"{r['method']} seed {r['seed']} ({r['diverged']})" for r in rows if r.get("diverged")]
    return f"\nDiverged in training, counted above as measured: {'; '.join(found)}.\n" if found else ""


def write_reports(result: dict, out: Path) -> str:
    """Write results.json, results.md, reliability.json and reliability.png; return the markdown."""
    reliability: dict = {}
    text = markdown(result)
    for row in result["rows"]:
        if row["eval_task"] == result["config"]["data"]["task"] and row["reliability"] is not None:
            reliability.setdefault(row["method"], {})[str(row["seed"])] = row["reliability"]
    rows = [{k: v for k, v in row.items() if k != "reliability"} for row in result["rows"]]
    write_json(out / "results.json", {**result, "rows": rows})
    write_json(out / "reliability.json", reliability)
    if reliability:
        pooled = {
            m: (
                np.concatenate([v["confidence"] for v in per_seed.values()]),
                np.concatenate([v["correct"] for v in per_seed.values()]),
            )
            for m, per_seed in reliability.items()
        }
        plots.plot_reliability(pooled, out / "reliability.png")
    write_text(out / "results.md", text)
    return text
