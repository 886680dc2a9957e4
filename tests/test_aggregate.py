"""Paired tests of IA2 → SFT against SFT on hand-made rows: which rows pair, and t with both p-values as scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ia2.reporting import aggregate

# (task, seed) -> (ia2-sft accuracy, sft accuracy, ia2-sft ECE, sft ECE)
VALUES = {
    ("t1", 0): (0.80, 0.70, 0.10, 0.20),
    ("t1", 1): (0.75, 0.72, 0.12, 0.15),
    ("t1", 2): (0.90, 0.71, 0.08, 0.09),
    ("t2", 0): (0.60, 0.62, 0.30, 0.25),
    ("t2", 1): (0.66, 0.58, 0.22, 0.28),
    ("t2", 2): (0.70, 0.61, 0.20, 0.26),
}


def row(method: str, task: str, seed: int, accuracy: float | None, ece: float | None) -> dict:
    """One result row as `aggregate.load_rows` yields it (the fields a paired test reads)."""
    return {
        "model": "m",
        "task": task,
        "eval_task": task,
        "n_train": 4,
        "condition": "c",
        "method": method,
        "seed": seed,
        "accuracy": accuracy,
        "ece": ece,
    }


def rows() -> list[dict]:
    """Every pair of VALUES, plus rows that must not pair: a seed without SFT, an SFT row without the metric, and a
    third method."""
    out = []
    for (task, seed), (acc_a, acc_b, ece_a, ece_b) in VALUES.items():
        out += [row("ia2-sft", task, seed, acc_a, ece_a), row("sft", task, seed, acc_b, ece_b)]
    return out + [
        row("ia2-sft", "t1", 3, 0.99, 0.01),
        row("ia2-sft", "t2", 3, 0.5, 0.5),
        row("sft", "t2", 3, None, None),
        row("icl", "t1", 0, 0.1, 0.9),
    ]


def expected(tasks: tuple[str, ...], metric: int) -> tuple[list[float], list[float]]:
    """The ia2-sft and sft values of the expected pairs of `tasks`, for metric column 0 (accuracy) or 2 (ECE)."""
    keys = [k for k in VALUES if k[0] in tasks]
    return [VALUES[k][metric] for k in keys], [VALUES[k][metric + 1] for k in keys]


@pytest.mark.parametrize(("metric", "column", "alternative"), [("accuracy", 0, "greater"), ("ece", 2, "less")])
def test_paired_test_pairs_by_seed_and_matches_scipy(metric, column, alternative):
    """Per task and pooled over tasks, in the paper's direction: IA2 → SFT more accurate, lower ECE."""
    per_task = aggregate.paired_test(rows(), metric=metric)
    pooled = aggregate.paired_test(rows(), metric=metric, by=("model",))
    assert [(t["task"], t["pairs"]) for t in per_task] == [("t1", 3), ("t2", 3)]
    assert [t["pairs"] for t in pooled] == [6]
    for test, tasks in zip(per_task + pooled, (("t1",), ("t2",), ("t1", "t2"))):
        x, y = expected(tasks, column)
        two, one = stats.ttest_rel(x, y), stats.ttest_rel(x, y, alternative=alternative)
        assert (test["a"], test["b"], test["metric"], test["alternative"]) == ("ia2-sft", "sft", metric, alternative)
        assert test["mean_difference"] == pytest.approx(sum(x) / len(x) - sum(y) / len(y))
        assert test["t"] == pytest.approx(two.statistic, rel=1e-12)
        assert test["p_two_sided"] == pytest.approx(two.pvalue, rel=1e-12)
        assert test["p_one_sided"] == pytest.approx(one.pvalue, rel=1e-12)
        assert "p_value" not in test
        # the 95% interval by hand: mean difference ± t(0.975, n − 1) · sd / √n; d_z = mean difference / sd
        diff = np.array(x) - np.array(y)
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        assert test["ci95"] == pytest.approx([diff.mean() - half, diff.mean() + half], rel=1e-9)
        assert test["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
        assert test["tasks"] == len(tasks)
    assert [t["tasks_as_unit"] for t in per_task] == [None, None], "one task: no task-level test"
    means = [np.mean(np.subtract(*expected((task,), column))) for task in ("t1", "t2")]
    unit = stats.ttest_1samp(means, 0.0, alternative=alternative)
    assert pooled[0]["tasks_as_unit"]["p_one_sided"] == pytest.approx(unit.pvalue, rel=1e-12)


def test_paired_test_without_two_pairs_has_no_statistic():
    """One pair: the group is reported with its difference, but t and p are undefined."""
    one = [row("ia2-sft", "t1", 0, 0.8, 0.1), row("sft", "t1", 0, 0.7, 0.2), row("ia2-sft", "t2", 0, 0.8, 0.1)]
    [test] = aggregate.paired_test(one)
    assert (test["task"], test["pairs"]) == ("t1", 1)
    assert (test["t"], test["p_one_sided"], test["p_two_sided"], test["ci95"], test["d_z"]) == (None,) * 5
    assert test["mean_difference"] == pytest.approx(0.1)


def test_selection_compares_tuned_values_on_the_seeds_they_share():
    """A sweep still running: lr 0.01 has seeds 0 and 1, lr 0.001 only seed 0. On seed 0 alone 0.001 is better
    (0.4 < 0.5), though 0.01's mean over its own seeds (0.3) would look better; all of 0.001's rows are kept."""

    def trained(lr: float, seed: int, dev: float) -> dict:
        return {**row("sft", "t1", seed, 0.5, 0.1), "tuned": {"train.lr": lr}, "train": [{"best_dev_loss": dev}]}

    rows = [trained(0.01, 0, 0.5), trained(0.01, 1, 0.1), trained(0.001, 0, 0.4)]
    kept, [choice] = aggregate.select(rows)
    assert choice["tuned"] == {"train.lr": 0.001} and choice["seeds"] == [0]
    assert kept == [rows[2]]
