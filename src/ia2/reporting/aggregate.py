"""From result rows to reported cells: hyperparameters chosen on dev data, mean ± std over seeds, paired t-tests."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from scipy import stats

from ia2 import config
from ia2.config.legacy import TRAIN_RENAMED
from ia2.errors import IA2Error
from ia2.evaluation import metrics
from ia2.training.methods import HEADLINE, baselines

METRICS = ("accuracy", "ece", "ece_equal_mass", "brier", "nll", "asim", "parse_failure_rate")
LOWER_IS_BETTER = frozenset({"ece", "ece_equal_mass", "brier", "nll", "parse_failure_rate"})


def load_rows(folder: Path) -> list[dict]:
    """Every row of a sweep or run folder, tagged with its run's tuned values and condition.

    A sweep folder's runs are those its sweep.json names (each with a `spec.json`; an older sweep.json-less folder:
    every spec.json below it); a single `ia2 run` folder is read from its results.json or, while it is unfinished,
    its run.json. Each row records its run folder as `run`.
    """
    rows = []
    for spec_path in _spec_paths(folder):
        spec = _read(spec_path)
        rows += _tagged(spec_path.parent, spec["key"], spec["tuned"], spec["config"])
    for name in ("results.json", "run.json"):
        if not rows and (folder / name).exists():
            recorded = _read(folder / name)
            recorded = {**recorded["config"], "key": recorded.get("key", recorded["config"].get("key"))}
            rows = _tagged(folder, recorded["key"], {}, recorded)
    if not rows:
        raise IA2Error(f"{folder}: no result rows found (expected a sweep or run folder)")
    return rows


def _read(path: Path) -> dict:
    """A JSON file of a run, or one line naming it when it is corrupt (the run or sweep recomputes it)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IA2Error(
            f"{path}: corrupt; rerun the run or sweep that wrote it, which sets it aside and recomputes it"
        ) from None


def _spec_paths(folder: Path) -> list[Path]:
    """The spec.json of each run a sweep folder holds: those its sweep.json names, else every one below it."""
    plan = folder / "sweep.json"
    if plan.is_file() and "runs" in json.loads(plan.read_text()):
        listed = [folder / run / "spec.json" for run in json.loads(plan.read_text())["runs"]]
        return [p for p in listed if p.is_file()]
    return sorted(folder.rglob("spec.json"))


def _tagged(run: Path, key: str, tuned: dict, recorded: dict) -> list[dict]:
    """A run's rows tagged with its tuned values and its condition: the config (completed with today's defaults)
    without methods, seeds and the tuned settings, as JSON."""
    full = config.with_defaults(recorded)
    tuned = {_tuned_path(k): v for k, v in tuned.items()}
    condition = {k: v for k, v in full.items() if k not in ("methods", "seeds") and k not in tuned}
    for name in config.SECTIONS:
        condition[name] = {k: v for k, v in full[name].items() if f"{name}.{k}" not in tuned}
    text = json.dumps(condition, sort_keys=True, default=str)
    out = []
    for path in sorted((run / "rows" / key).glob("seed*/*.json")):
        row = _read(path)
        out.append({**row, "tuned": tuned, "condition": text, "run": str(run)})
    return out


def _tuned_path(recorded: str) -> str:
    """A tuned setting's path as today's config names it (ia2 0.1 recorded `train.batch_size` and flat names)."""
    head, _, tail = recorded.partition(".")
    if head == "train" and tail in TRAIN_RENAMED:
        return f"train.{TRAIN_RENAMED[tail]}"
    return config.leaves().get(recorded, recorded)


def dev_score(row: dict, select: str) -> float:
    """The selection criterion of a trained row, lower is better: the last stage's best dev loss, −dev accuracy, or
    (only to reproduce the reference code, which selects on its evaluation set) −test accuracy."""
    if select == "test_accuracy":
        return -row["accuracy"]
    if select == "dev_accuracy":
        if row.get("dev_accuracy") is None:
            raise IA2Error(f"{row['task']}: rows have no dev accuracy (a generative task): select on dev_loss")
        return -row["dev_accuracy"]
    return row["train"][-1]["best_dev_loss"]


def select(rows: list[dict], by: str = "dev_loss") -> tuple[list[dict], list[dict]]:
    """Keep, per (condition, method), the tuned values with the best mean dev score over the seeds every value has
    (so that a sweep still running compares its learning rates on the same seeds); return the kept rows (every
    evaluation set) and the choices made. Baselines do not depend on tuned values: the first is kept."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row["condition"], row["method"]][json.dumps(row["tuned"], sort_keys=True)].append(row)
    kept, choices = [], []
    for (condition, method), by_value in groups.items():
        if method in baselines():
            kept += next(iter(by_value.values()))
            continue
        seeds = [{r["seed"] for r in value_rows} for value_rows in by_value.values()]
        common = set.intersection(*seeds) or set.union(*seeds)
        scored = {v: [r for r in value_rows if r["seed"] in common] for v, value_rows in by_value.items()}
        best = min(scored, key=lambda v: _mean_dev(scored[v], by))
        kept += by_value[best]
        choices.append(
            {
                "condition": condition,
                "method": method,
                "tuned": json.loads(best),
                "dev_scores": {v: _mean_dev(r, by) for v, r in scored.items()},
                "seeds": sorted(common),
            }
        )
    return kept, choices


def _mean_dev(rows: list[dict], by: str) -> float:
    own = [r for r in rows if r["eval_task"] == r["task"]]
    return float(np.mean([dev_score(r, by) for r in own]))


def cells(rows: Iterable[dict]) -> list[dict]:
    """Mean and sample standard deviation (ddof 1; None for one seed) over seeds of every metric, one cell per
    (model, task, eval_task, N, method, condition), in that order (N as a number, not as its run folder sorts)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["model"], r["task"], r["eval_task"], r["n_train"], r["method"], r["condition"]].append(r)
    out = []
    for (model, task, eval_task, n, method, condition), mine in sorted(groups.items()):
        cell = {
            "model": model,
            "task": task,
            "eval_task": eval_task,
            "n_train": n,
            "method": method,
            "condition": condition,
            "n_seeds": len(mine),
            "seeds": sorted(r["seed"] for r in mine),
        }
        for metric in METRICS:
            values = [r[metric] for r in mine if r.get(metric) is not None]
            cell[f"{metric}_mean"] = float(np.mean(values)) if values else None
            cell[f"{metric}_std"] = float(metrics.sample_std(values)) if len(values) > 1 else None
        out.append(cell)
    return out


def paired_test(
    rows: Iterable[dict],
    a: str = HEADLINE[0],
    b: str = HEADLINE[1],
    metric: str = "accuracy",
    by: tuple[str, ...] = ("model", "task", "eval_task", "n_train", "condition"),
) -> list[dict]:
    """Paired t-tests of method a against method b on `metric`, pairing rows by seed (and task when pooled); one
    test per `by` group, in the groups' order. Each reports t (of a − b), the two-sided p and the one-sided p of
    "a is better than b" (`alternative`: a − b greater for accuracy, less for ECE and other lower-is-better metrics);
    t and both p are None for fewer than two pairs or differences all equal."""
    pairs: dict[tuple, dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["method"] in (a, b) and r.get(metric) is not None:
            unit = (r["task"], r["eval_task"], r["seed"], r["condition"])
            pairs[tuple(r[k] for k in by)][unit][r["method"]] = r[metric]
    alternative = "less" if metric in LOWER_IS_BETTER else "greater"
    out = []
    for group, units in sorted(pairs.items()):
        both = {key: (u[a], u[b]) for key, u in units.items() if a in u and b in u}
        if not both:
            continue
        x, y = np.array(list(both.values())).T
        out.append(
            {
                **dict(zip(by, group)),
                "metric": metric,
                "a": a,
                "b": b,
                "pairs": len(both),
                "mean_difference": float((x - y).mean()),
                "alternative": alternative,
                **t_test(x, y, alternative),
                **tasks_as_unit(both, alternative),
            }
        )
    return out


def tasks_as_unit(pairs: Mapping[tuple, tuple[float, float]], alternative: str) -> dict:
    """How many (task, eval set)s the pairs (keyed by (task, eval_task, ...)) span and, where several, the t-test
    of their mean differences against 0: seeds of one task are not independent draws of a claim about tasks."""
    by_task: dict[tuple, list[float]] = defaultdict(list)
    for (task, eval_task, *_), (x, y) in pairs.items():
        by_task[task, eval_task].append(x - y)
    means = np.array([np.mean(d) for d in by_task.values()])
    unit = t_test(means, np.zeros_like(means), alternative) if len(by_task) > 1 else None
    return {"tasks": len(by_task), "tasks_as_unit": unit}


def t_test(x: np.ndarray, y: np.ndarray, alternative: str) -> dict:
    """t of the paired x − y with its two-sided and one-sided (`alternative`) p, the 95% confidence interval of the
    mean difference and the effect size d_z (mean difference over its standard deviation); all None when t is
    undefined."""
    if len(x) < 2 or np.std(x - y) == 0:
        return {"t": None, "p_two_sided": None, "p_one_sided": None, "ci95": None, "d_z": None}
    two_sided, one_sided = stats.ttest_rel(x, y), stats.ttest_rel(x, y, alternative=alternative)
    interval = two_sided.confidence_interval(0.95)
    return {
        "t": float(two_sided.statistic),
        "p_two_sided": float(two_sided.pvalue),
        "p_one_sided": float(one_sided.pvalue),
        "ci95": [float(interval.low), float(interval.high)],
        "d_z": float((x - y).mean() / (x - y).std(ddof=1)),
    }
