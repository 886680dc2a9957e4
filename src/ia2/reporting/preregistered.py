"""Pre-registered tests: one primary test and a family of secondary ones, declared in a sweep file before any run,
so that a report cannot choose its tests after seeing the rows. The primary test is read alone at its level; the
secondary tests' p-values are corrected together by Holm's step-down method.

A test pairs method `a` with method `b` by seed on one metric (one-sided in the direction of "a is better"), over
the rows its filters keep (model, task, eval_task, n_train; a filter left out pools over that setting, and rows are
in-distribution unless eval_task is given). Pooled over tasks, it also reports the test with the tasks as the unit
(each task's mean difference over seeds), which does not treat seeds of one task as independent draws of the claim.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ia2.errors import IA2Error
from ia2.reporting.aggregate import LOWER_IS_BETTER, t_test, tasks_as_unit
from ia2.reporting.tables import difference, p_value
from ia2.training.methods import display

FILTERS = ("model", "task", "eval_task", "n_train")
METRICS = ("accuracy", "ece")
ALPHA = 0.05


@dataclass(frozen=True)
class Test:
    """One declared comparison: `a` against `b` on `metric`, over the rows the filters keep (None: pooled)."""

    name: str
    a: str
    b: str
    metric: str = "accuracy"
    model: str | None = None
    task: str | None = None
    eval_task: str | None = None
    n_train: int | None = None

    def keeps(self, row: Mapping[str, Any]) -> bool:
        """Whether a result row is one of this test's (in-distribution unless the test names an eval_task)."""
        if any(getattr(self, k) is not None and row.get(k) != getattr(self, k) for k in FILTERS):
            return False
        return self.eval_task is not None or row["eval_task"] == row["task"]


@dataclass(frozen=True)
class Plan:
    """The primary test and the secondary family, as the sweep file declares them."""

    primary: Test
    secondary: tuple[Test, ...] = ()


def parse(block: Mapping[str, Any], methods: Sequence[str], where: str) -> Plan:
    """The `tests` block of a sweep file (`primary`: one test, `secondary`: a list), each test a mapping with `name`,
    `a`, `b` and optional `metric` and filters; every method must be one the sweep runs."""
    if set(block) - {"primary", "secondary"} or "primary" not in block:
        raise IA2Error(f"{where}: tests takes `primary` (one test) and `secondary` (a list of tests)")
    secondary = block.get("secondary") or []
    if not isinstance(secondary, list):
        raise IA2Error(f"{where}: tests.secondary must be a list of tests")
    tests = [_test(block["primary"], methods, f"{where}: tests.primary")]
    tests += [_test(t, methods, f"{where}: tests.secondary[{i}]") for i, t in enumerate(secondary)]
    names = [t.name for t in tests]
    if len(set(names)) < len(names):
        raise IA2Error(f"{where}: tests: two tests are named {next(n for n in names if names.count(n) > 1)!r}")
    return Plan(tests[0], tuple(tests[1:]))


def _test(spec: Any, methods: Sequence[str], where: str) -> Test:
    """One test from its mapping, checked."""
    known = {f.name for f in fields(Test)}
    if not isinstance(spec, Mapping) or not {"name", "a", "b"} <= set(spec):
        raise IA2Error(f"{where}: a test is a mapping with name, a and b (and metric, {', '.join(FILTERS)})")
    unknown = sorted(set(spec) - known)
    if unknown:
        raise IA2Error(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for side in ("a", "b"):
        if spec[side] not in methods:
            raise IA2Error(f"{where}: {side}: {spec[side]!r} is not one of the sweep's methods ({', '.join(methods)})")
    if spec.get("metric", "accuracy") not in METRICS:
        raise IA2Error(f"{where}: metric must be one of {', '.join(METRICS)}")
    return Test(**spec)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the given order (None, an undefined test, stays None and counts in
    the family as a test that rejects nothing)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i] is None, p_values[i] or 0.0))
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, i in enumerate(order):
        if p_values[i] is None:
            continue
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def measure(plan: Plan, rows: Iterable[dict]) -> list[dict]:
    """Every declared test on the kept rows (one per method, seed and condition), primary first; the secondary
    tests carry their Holm-adjusted one-sided p-value. Each says whether it rejects at one-sided ALPHA (the primary
    on its own p, a secondary on its Holm p; None: not run, no pairs)."""
    rows = list(rows)
    primary = {"role": "primary", **_measure(plan.primary, rows)}
    primary["rejects"] = _rejects(primary["p_one_sided"])
    secondary = [{"role": "secondary", **_measure(t, rows)} for t in plan.secondary]
    for result, adjusted in zip(secondary, holm([r["p_one_sided"] for r in secondary])):
        result["p_holm"] = adjusted
        result["rejects"] = _rejects(adjusted)
    return [primary, *secondary]


def _rejects(p: float | None) -> bool | None:
    return None if p is None else bool(p < ALPHA)


def _measure(test: Test, rows: list[dict]) -> dict:
    """A test's pairs by (task, eval_task, seed, condition), their paired t-test, wins / losses / ties, and the
    test with tasks as the unit when the pairs span several tasks."""
    units: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["method"] in (test.a, test.b) and test.keeps(r) and r.get(test.metric) is not None:
            units[(r["task"], r["eval_task"], r["seed"], r["condition"])][r["method"]] = r[test.metric]
    pairs = {u: (v[test.a], v[test.b]) for u, v in sorted(units.items()) if test.a in v and test.b in v}
    alternative = "less" if test.metric in LOWER_IS_BETTER else "greater"
    sign = -1.0 if alternative == "less" else 1.0
    head = {"name": test.name, "a": test.a, "b": test.b, "metric": test.metric, "alternative": alternative}
    head |= {k: getattr(test, k) for k in FILTERS}
    if not pairs:
        return head | {"pairs": 0, "mean_difference": None, **t_test(np.array([]), np.array([]), alternative)}
    x, y = (np.array(v) for v in zip(*pairs.values()))
    better = sign * (x - y)
    return head | {
        "pairs": len(pairs),
        "mean_difference": float((x - y).mean()),
        "median_difference": float(np.median(x - y)),
        "wins": int((better > 0).sum()),
        "losses": int((better < 0).sum()),
        "ties": int((better == 0).sum()),
        **t_test(x, y, alternative),
        **tasks_as_unit(pairs, alternative),
    }


def markdown(results: Sequence[dict]) -> str:
    """The pre-registered tests as a report section: each test's scope, difference with its 95% CI, d_z, W/L/T and
    p-values (Holm-adjusted for the secondary family; with tasks as the unit where pooled)."""
    lines = [
        "## Pre-registered tests\n",
        "Declared in the sweep file before any run (`tests`). The primary test is read alone at one-sided "
        f"α = {ALPHA}; the secondary tests are one family, their one-sided p-values adjusted by Holm's method; "
        "`rejects` reads each so (a test with no pairs was not run and rejects nothing). Differences are a − b in "
        "points (ECE: in points of calibration error, lower is better); pairs are (task, eval set, seed).\n",
        "| role | test | a − b | scope | metric | pairs | Δ [95% CI] | d_z | W/L/T | p one-sided | p Holm "
        "| rejects | p two-sided | p tasks as unit |",
        "|---" * 14 + "|",
    ]
    for r in results:
        scope = ", ".join(f"{k}={r[k]}" for k in FILTERS if r.get(k) is not None) or "all"
        unit = r.get("tasks_as_unit") or {}
        lines.append(
            f"| {r['role']} | {r['name']} | {display(r['a'])} − {display(r['b'])} | {scope} | {r['metric']} "
            f"| {r['pairs']} | {difference(r)} | {_num(r.get('d_z'))} | {_wlt(r)} | {p_value(r.get('p_one_sided'))} "
            f"| {p_value(r.get('p_holm'))} | {_decision(r['rejects'])} | {p_value(r.get('p_two_sided'))} "
            f"| {p_value(unit.get('p_one_sided'))} |"
        )
    return "\n".join(lines) + "\n"


def _decision(rejects: bool | None) -> str:
    return "not run" if rejects is None else "yes" if rejects else "no"


def _wlt(r: dict) -> str:
    return f"{r['wins']}/{r['losses']}/{r['ties']}" if r.get("pairs") else "–"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
