"""Every pair the method declarations name (`tested_against`) besides the headline, paired over seeds: descriptive
two-sided tests, so that a control (step-matched SFT, the placebo teacher, a longer IA2) is read against what it
controls for. Each (model, source task, eval set, N, variant) apart; uncorrected, as no claim rests on them (claims
rest on the headline or the pre-registered tests)."""

from __future__ import annotations

from pathlib import Path

from ia2.reporting.aggregate import paired_test
from ia2.reporting.tables import difference, p_value
from ia2.training.methods import HEADLINE, comparisons, display

GROUP = ("model", "task", "eval_task", "n_train", "condition")


def pair_tests(kept: list[dict]) -> list[dict]:
    """Accuracy and ECE tests of every declared pair but the headline, on the selected rows."""
    return [
        test
        for a, b in comparisons()
        if (a, b) != HEADLINE
        for metric in ("accuracy", "ece")
        for test in paired_test(kept, a, b, metric)
    ]


def section(tests: list[dict], names: dict[str, str]) -> str:
    """The declared pairs' tests as one table, a row per pair and group with accuracy and ECE side by side."""
    rows: dict[tuple, dict[str, dict]] = {}
    for t in tests:
        rows.setdefault((t["a"], t["b"], *(t[k] for k in GROUP)), {})[t["metric"]] = t
    if not rows:
        return ""
    text = (
        "\n## Every declared comparison, paired over seeds\n\n"
        "Descriptive: a − b in points (ECE in points of calibration error, lower is better), 95% CI and two-sided p "
        "of the paired t-test over seeds, uncorrected. The headline pair is above; the pre-registered tests, where "
        "a sweep declares them, are the ones to read for claims.\n\n"
        "| a − b | model | source | eval | N | variant | pairs | Δ accuracy [95% CI] | p | Δ ECE [95% CI] | p |\n"
        + "|---" * 11
        + "|\n"
    )
    for (a, b, model, task, eval_task, n, condition), metrics in rows.items():
        acc, ece = (metrics.get(m) or {} for m in ("accuracy", "ece"))
        sides = [f"{difference(t or None)} | {p_value(t.get('p_two_sided'))}" for t in (acc, ece)]
        text += (
            f"| {display(a)} − {display(b)} | {Path(model).name} | {task} | {eval_task} | {n} "
            f"| {names.get(condition, '')} | {(acc or ece)['pairs']} | {' | '.join(sides)} |\n"
        )
    return text
