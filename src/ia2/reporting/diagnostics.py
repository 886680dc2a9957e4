"""What the headline tables average over: how each trained stage ended (its optimizer steps, whether the epoch cap
rather than early stopping ended it, whether its best dev state came at the last checks, so was still improving),
and how ICL's accuracy depends on which demonstrations it drew. Read from the rows' stage logs, in-distribution rows
only (an out-of-distribution row reuses its adapter)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ia2.evaluation import metrics
from ia2.registry import METHODS
from ia2.training.methods import display


def _settings(condition: str) -> dict:
    return json.loads(condition).get("train", {})


def _ended_by_cap(stage: dict, cap_epochs: int | None, max_steps: int | None) -> bool:
    """Whether a stage ran to its budget (epoch cap or step cap) rather than stopping early."""
    return bool(
        (cap_epochs is not None and stage["epochs"] >= cap_epochs) or (max_steps and stage["steps"] >= max_steps)
    )


def _late_best(stage: dict) -> bool:
    """Whether the best dev state was found at one of the stage's last two dev checks after its start (still
    improving); a stage whose best is its start never improved, however few checks it had."""
    checks = [h["step"] for h in stage.get("history", []) if "dev_loss" in h and h["step"] > 0]
    return bool(stage.get("best_step")) and stage["best_step"] in checks[-2:]


def stage_summary(rows: list[dict]) -> list[dict]:
    """Per (model, N, task, condition, method, stage): seeds, mean and range of optimizer steps, and how many stages
    the budget ended, found their best state late, diverged or never improved on their start."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("train") and r["eval_task"] == r["task"] and r["method"] in METHODS:
            groups[r["model"], r["n_train"], r["task"], r["condition"], r["method"]].append(r)
    order = list(METHODS)
    out = []
    for (model, n, task, condition, method), members in sorted(
        groups.items(), key=lambda kv: (kv[0][:4], order.index(kv[0][4]))
    ):
        train = _settings(condition)
        for i, declared in enumerate(METHODS[method].stages):
            logs = [m["train"][i] for m in members if len(m["train"]) > i]
            fixed = declared.steps_of is not None
            cap = None if fixed or train.get("max_epochs") is None else train["max_epochs"] * declared.epochs_times
            steps = [s["steps"] for s in logs]
            out.append(
                {
                    "model": model, "n_train": n, "task": task, "condition": condition, "method": method,
                    "stage": logs[0]["stage"] if logs else f"{declared.loss}:{declared.labels}",
                    "position": i + 1, "seeds": len(logs), "fixed_steps": fixed,
                    "steps_mean": float(np.mean(steps)) if steps else None,
                    "steps_min": min(steps, default=None), "steps_max": max(steps, default=None),
                    "ended_by_cap": None if fixed else sum(_ended_by_cap(s, cap, train.get("max_steps")) for s in logs),
                    "late_best": None if fixed else sum(_late_best(s) for s in logs),
                    "diverged": sum(bool(s.get("diverged")) for s in logs),
                    "not_improved": sum(s.get("improved") is False for s in logs),
                }
            )  # fmt: skip
    return out


def icl_draws(rows: list[dict]) -> list[dict]:
    """Per (model, N, task, eval set, condition): ICL averaged over its demonstration draws against its first draw
    alone, mean and std over seeds, with the mean spread between a seed's best and worst draw."""
    groups: dict[tuple, list[list[float]]] = defaultdict(list)
    for r in rows:
        if r["method"] == "icl" and r.get("accuracy_by_draw"):
            groups[r["model"], r["n_train"], r["task"], r["eval_task"], r["condition"]].append(r["accuracy_by_draw"])
    out = []
    for (model, n, task, eval_task, condition), draws in sorted(groups.items()):
        mean, first = [float(np.mean(d)) for d in draws], [d[0] for d in draws]
        out.append(
            {
                "model": model, "n_train": n, "task": task, "eval_task": eval_task, "condition": condition,
                "draws": len(draws[0]), "seeds": len(draws),
                "mean_of_draws": float(np.mean(mean)), "mean_of_draws_std": float(metrics.sample_std(mean)),
                "first_draw": float(np.mean(first)), "first_draw_std": float(metrics.sample_std(first)),
                "spread": float(np.mean([max(d) - min(d) for d in draws])),
            }
        )  # fmt: skip
    return out


def section(stages: list[dict], draws: list[dict], names: dict[str, str]) -> str:
    """`stage_summary` and `icl_draws` as report sections (`names`: each condition's variant)."""
    text = ""
    if stages:
        text += (
            "\n## How the trained stages ended\n\n"
            "Per stage, over seeds: optimizer steps (mean, range); stages the budget (epoch or step cap) ended "
            "instead of early stopping; stages whose best dev state came at one of their last two dev checks (still "
            "improving when they ended); diverged stages and stages that never improved on their start. A "
            "step-matched stage runs a fixed number of steps, so the cap does not apply.\n\n"
            "| model | N | task | variant | method | stage | steps | ended by budget | best at last two checks "
            "| diverged | never improved |\n" + "|---" * 11 + "|\n"
        )
        for s in stages:
            steps = f"{s['steps_mean']:.0f} [{s['steps_min']}–{s['steps_max']}]" if s["seeds"] else "–"
            count = lambda k: "–" if s[k] is None else f"{s[k]}/{s['seeds']}"  # noqa: E731
            text += (
                f"| {Path(s['model']).name} | {s['n_train']} | {s['task']} | {names.get(s['condition'], '')} "
                f"| {display(s['method'])} | {s['position']}. {s['stage']} | {steps} | {count('ended_by_cap')} "
                f"| {count('late_best')} | {count('diverged')} | {count('not_improved')} |\n"
            )
    if draws:
        text += (
            "\n## ICL by demonstration draw\n\n"
            "Accuracy in percent, mean (std) over seeds: averaged over the draws (the tables' ICL) and the first draw "
            "alone; spread is the mean gap between a seed's best and worst draw.\n\n"
            "| model | N | task | eval | variant | draws | mean of draws | first draw | spread |\n" + "|---" * 9 + "|\n"
        )
        for d in draws:
            text += (
                f"| {Path(d['model']).name} | {d['n_train']} | {d['task']} | {d['eval_task']} "
                f"| {names.get(d['condition'], '')} | {d['draws']} "
                f"| {100 * d['mean_of_draws']:.1f} ({100 * d['mean_of_draws_std']:.1f}) "
                f"| {100 * d['first_draw']:.1f} ({100 * d['first_draw_std']:.1f}) | {100 * d['spread']:.1f} |\n"
            )
    return text
