"""Pre-registered tests: the declared family is measured as declared (pairs, direction, Holm), bad declarations are
refused in one line, and a sweep's report carries the section (`test_sweep`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ia2.errors import IA2Error
from ia2.reporting import preregistered
from test_aggregate import VALUES, rows

METHODS = ("sft", "ia2-sft", "icl")


def test_holm_adjusts_step_down_in_the_given_order():
    """p (0.01, 0.04, 0.03): sorted they are multiplied by 3, 2, 1 and made monotone: 0.03, 0.06, 0.06."""
    assert preregistered.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert preregistered.holm([0.5, None]) == [pytest.approx(1.0), None], "an undefined test still counts in m"
    assert preregistered.holm([]) == []


def test_a_declared_test_pairs_by_seed_and_pools_over_tasks_when_no_task_is_named():
    plan = preregistered.parse(
        {
            "primary": {"name": "t1", "a": "ia2-sft", "b": "sft", "task": "t1"},
            "secondary": [
                {"name": "pooled", "a": "ia2-sft", "b": "sft"},
                {"name": "ece", "a": "ia2-sft", "b": "sft", "metric": "ece"},
            ],
        },
        METHODS,
        "s.yaml",
    )
    primary, pooled, ece = preregistered.measure(plan, rows())
    keys = sorted(k for k in VALUES if k[0] == "t1")
    x, y = np.array([VALUES[k][0] for k in keys]), np.array([VALUES[k][1] for k in keys])
    assert primary["role"] == "primary" and primary["pairs"] == len(keys) and "p_holm" not in primary
    assert primary["p_one_sided"] == pytest.approx(stats.ttest_rel(x, y, alternative="greater").pvalue)
    assert primary["wins"] + primary["losses"] + primary["ties"] == len(keys)
    assert primary["tasks_as_unit"] is None, "one task"
    assert pooled["pairs"] == len(VALUES) and pooled["tasks"] == 2
    means = [np.mean([VALUES[k][0] - VALUES[k][1] for k in VALUES if k[0] == t]) for t in ("t1", "t2")]
    assert pooled["tasks_as_unit"]["p_one_sided"] == pytest.approx(
        stats.ttest_1samp(means, 0.0, alternative="greater").pvalue
    )
    assert ece["alternative"] == "less"
    assert [pooled["p_holm"], ece["p_holm"]] == preregistered.holm([pooled["p_one_sided"], ece["p_one_sided"]])
    assert primary["rejects"] == (primary["p_one_sided"] < 0.05), "the primary is read on its own p"
    assert [pooled["rejects"], ece["rejects"]] == [pooled["p_holm"] < 0.05, ece["p_holm"] < 0.05], "secondary: Holm"


def test_a_test_without_pairs_is_not_run_and_rejects_nothing():
    """A cut condition's test stays in the family (Holm's m counts it) and the report says it was not run."""
    plan = preregistered.parse(
        {
            "primary": {"name": "p", "a": "ia2-sft", "b": "sft", "task": "t1"},
            "secondary": [
                {"name": "cut", "a": "ia2-sft", "b": "sft", "task": "absent"},
                {"name": "run", "a": "ia2-sft", "b": "sft", "task": "t2"},
            ],
        },
        METHODS,
        "s.yaml",
    )
    primary, cut, run = preregistered.measure(plan, rows())
    assert cut["pairs"] == 0 and cut["rejects"] is None and cut["p_holm"] is None
    assert run["p_holm"] == pytest.approx(min(1.0, 2 * run["p_one_sided"])), "m = 2: the cut test still counts"
    lines = preregistered.markdown([primary, cut, run]).splitlines()
    assert "| not run |" in next(x for x in lines if x.startswith("| secondary | cut"))


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"secondary": []}, "tests takes `primary`"),
        ({"primary": {"name": "p", "a": "ia2-sft"}}, "tests.primary: a test is a mapping with name, a and b"),
        ({"primary": {"name": "p", "a": "ia2", "b": "sft"}}, "tests.primary: a: 'ia2' is not one of the sweep's"),
        ({"primary": {"name": "p", "a": "sft", "b": "icl", "n": 4}}, "tests.primary: unknown field 'n'"),
        ({"primary": {"name": "p", "a": "sft", "b": "icl", "metric": "f1"}}, "tests.primary: metric must be one of"),
        (
            {"primary": {"name": "p", "a": "sft", "b": "icl"}, "secondary": [{"name": "p", "a": "icl", "b": "sft"}]},
            "tests: two tests are named 'p'",
        ),
    ],
)
def test_a_bad_declaration_is_refused_in_one_line(block, needle):
    with pytest.raises(IA2Error, match=f"^s.yaml: {needle}".replace("(", r"\(")):
        preregistered.parse(block, METHODS, "s.yaml")
