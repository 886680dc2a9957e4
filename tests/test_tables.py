"""Paper-layout tables against exact expected text on a small hand-made cell list."""

from __future__ import annotations

import pytest

from ia2.errors import IA2Error
from ia2.reporting import tables
from ia2.training.methods import HEADLINE, comparisons, display

METHODS = ["zero-shot", "icl", "sft", "ia2", "ia2-sft", "ia2+sft"]


def cell(task, eval_task, method, acc, acc_std, ece=None, ece_std=None, n=8, p=None, model="m") -> dict:
    """A cell; `p` is (one-sided, two-sided) p-values."""
    c = {
        "model": model,
        "task": task,
        "eval_task": eval_task,
        "n_train": n,
        "method": method,
        "accuracy_mean": acc,
        "accuracy_std": acc_std,
        "ece_mean": ece,
        "ece_std": ece_std,
        "n_seeds": 3,
    }
    return c if p is None else {**c, "p_one_sided": p[0], "p_two_sided": p[1]}


# The OOD row's cells come first: the in-distribution row must still lead its group.
CELLS = [
    cell("ag_news", "bbc", "icl", 0.60, 0.01, 0.10, 0.01),
    cell("ag_news", "bbc", "sft", 0.7004, 0.01, 0.30, 0.02),
    cell("ag_news", "bbc", "ia2-sft", 0.6996, 0.02, 0.25, 0.02, p=(0.7938, 0.4123)),  # ties SFT as displayed: both bold
    cell("ag_news", "ag_news", "zero-shot", 0.40, 0.0, 0.30, 0.0),
    cell("ag_news", "ag_news", "icl", 0.90, 0.01, 0.02, 0.01),  # best overall, but ICL is not a trained method
    cell("ag_news", "ag_news", "sft", 0.80, 0.02, 0.20, 0.03),
    cell("ag_news", "ag_news", "ia2", 0.75, 0.01, 0.05, 0.01),
    cell("ag_news", "ag_news", "ia2-sft", 0.85, 0.02, 0.15, 0.02, p=(0.0002, 0.0004)),
    cell("ag_news", "ag_news", "soft", 0.99, 0.0, 0.01, 0.0),  # not a requested column: ignored
    cell("ag_news", "ag_news", "ia2+sft", None, None),  # no values: shown as missing
    cell("gsm8k", "gsm8k", "sft", 0.30, 0.05),  # generative: no ECE
    cell("gsm8k", "gsm8k", "ia2-sft", 0.35, 0.04),
    cell("ag_news", "ag_news", "sft", 0.81, 0.01, 0.2, 0.01, n=16),  # another N
    cell("ag_news", "ag_news", "ia2-sft", 0.86, 0.01, 0.1, 0.01, n=16),
]

MARKDOWN = """\
| source | eval | w/o ICL | ICL | SFT only | IA2 only | IA2 → SFT | IA2 + SFT |
|---|---|---|---|---|---|---|---|
| ag_news | ag_news | 40.0 (0.0) / 0.30 (0.00) | 90.0 (1.0) / 0.02 (0.01) | 80.0 (2.0) / 0.20 (0.03) | 75.0 (1.0) / **0.05** (0.01) | **85.0** (2.0) / 0.15 (0.02) | – |
|  | bbc* | – | 60.0 (1.0) / 0.10 (0.01) | **70.0** (1.0) / 0.30 (0.02) | – | **70.0** (2.0) / **0.25** (0.02) | – |
| gsm8k | gsm8k | – | – | 30.0 (5.0) | – | **35.0** (4.0) | – |
"""

LATEX = r"""\begin{table*}[t]
\centering
\caption{Llama, $N=8$.}
\resizebox{\textwidth}{!}{%
\begin{tabular}{llcccccc}
\toprule
Source & Eval & w/o ICL & ICL & SFT only & IA2 only & IA2 $\rightarrow$ SFT & IA2 + SFT \\
\midrule
\multirow{2}{*}{ag\_news} & ag\_news & 40.0 (0.0) / 0.30 (0.00) & 90.0 (1.0) / 0.02 (0.01) & 80.0 (2.0) / 0.20 (0.03) & 75.0 (1.0) / \textbf{0.05} (0.01) & \textbf{85.0} (2.0) / 0.15 (0.02) & -- \\
 & bbc$^*$ & -- & 60.0 (1.0) / 0.10 (0.01) & \textbf{70.0} (1.0) / 0.30 (0.02) & -- & \textbf{70.0} (2.0) / \textbf{0.25} (0.02) & -- \\
\midrule
gsm8k & gsm8k & -- & -- & 30.0 (5.0) & -- & \textbf{35.0} (4.0) & -- \\
\bottomrule
\end{tabular}}
\end{table*}
"""

SIGNIFICANCE = """\
| model | source | eval | N | SFT only | IA2 → SFT | Δ accuracy | p (one-sided, IA2→SFT better) | p (two-sided) |
|---|---|---|---|---|---|---|---|---|
| m | ag_news | bbc* | 8 | 70.0 (1.0) | 70.0 (2.0) | -0.1 | 0.794 | 0.412 |
| m | ag_news | ag_news | 8 | 80.0 (2.0) | 85.0 (2.0) | +5.0 | <0.001 | <0.001 |
| m | gsm8k | gsm8k | 8 | 30.0 (5.0) | 35.0 (4.0) | +5.0 | – | – |
| m | ag_news | ag_news | 16 | 81.0 (1.0) | 86.0 (1.0) | +5.0 | – | – |
"""


def test_markdown_table():
    assert tables.markdown_table(CELLS, METHODS, 8) == MARKDOWN


def test_latex_table():
    assert tables.latex_table(CELLS, METHODS, 8, r"Llama, $N=8$.") == LATEX


def test_column_order_follows_methods():
    text = tables.markdown_table(CELLS, ["ia2-sft", "sft"], 16)
    assert text == (
        "| source | eval | IA2 → SFT | SFT only |\n|---|---|---|---|\n"
        "| ag_news | ag_news | **86.0** (1.0) / **0.10** (0.01) | 81.0 (1.0) / 0.20 (0.01) |\n"
    )


def test_all_display_names_come_from_the_method_table():
    names = [display(m) for m in ["zero-shot", "icl", "sft", "ia2", "ia2-sft", "ia2+sft", "sft-ia2", "sft-icl", "soft"]]
    assert names == [
        "w/o ICL",
        "ICL",
        "SFT only",
        "IA2 only",
        "IA2 → SFT",
        "IA2 + SFT",
        "SFT → IA2",
        "SFT (ICL labels)",
        "SFT (soft)",
    ]
    assert display("custom") == "custom", "a method outside the table is shown by its name"


def test_reports_test_the_pairs_the_method_table_declares():
    """The headline test and the adapter-overlap pairs are read from the methods' `tested_against`."""
    assert HEADLINE == ("ia2-sft", "sft")
    assert comparisons() == (
        ("ia2", "sft"),
        ("ia2-sft", "sft"),
        ("ia2-sft", "ia2"),
        ("ia2-sft", "sft-steps"),
        ("ia2-sft", "ia2-sft-placebo"),
        ("ia2-long", "ia2"),
        ("ia2-long-sft", "sft"),
        ("ia2-long-sft", "ia2-sft"),
    )


def test_significance_table():
    assert tables.significance_table(CELLS) == SIGNIFICANCE


@pytest.mark.parametrize(
    ("cells", "n", "match"),
    [
        (CELLS, 32, "no cells"),
        (CELLS + [cell("ag_news", "ag_news", "sft", 0.5, 0.0, model="other")], 8, "span models"),
        (CELLS + [cell("ag_news", "ag_news", "sft", 0.5, 0.0)], 8, "two cells"),
    ],
)
def test_tables_reject_ambiguous_input(cells, n, match):
    with pytest.raises(IA2Error, match=match):
        tables.markdown_table(cells, METHODS, n)


def test_significance_needs_a_pair():
    with pytest.raises(IA2Error, match="both"):
        tables.significance_table([cell("t", "t", "sft", 0.5, 0.1)])


def test_a_baseline_tied_with_the_best_trained_method_is_not_bold():
    cells = [cell("t", "t", "icl", 0.5, 0.0, 0.2, 0.0), cell("t", "t", "sft", 0.5, 0.0, 0.3, 0.0)]
    line = tables.markdown_table(cells, ["icl", "sft"], 8).splitlines()[-1]
    assert line == "| t | t | 50.0 (0.0) / 0.20 (0.00) | **50.0** (0.0) / **0.30** (0.00) |"


def test_means_table_averages_rows_every_method_has():
    cells = [{**c, "asim_mean": 0.5} for c in CELLS if c["method"] != "icl"]
    text = tables.means_table(
        cells + [cell("ag_news", "ag_news", "icl", 0.90, 0.01, 0.02, 0.01)], ["icl", "sft", "ia2-sft"]
    )
    assert text == (
        "| model | N | rows | ICL | SFT only | IA2 → SFT |\n|---|---|---|---|---|---|\n"
        "| m | 8 | 1 | 90.0 / 0.02 / – | 80.0 / 0.20 / 0.50 | 85.0 / 0.15 / 0.50 |\n"
    )
    both = tables.means_table(cells, ["sft", "ia2-sft"])
    assert "| m | 8 | 2 | 55.0 / – / 0.50 | 60.0 / – / 0.50 |" in both, "gsm8k has no ECE: the mean has none"
    assert "| m | 8 | 1 OOD* | 70.0 / 0.30 / 0.50 | 70.0 / 0.25 / 0.50 |" in both
    assert "| m | 16 | 1 | 81.0 / 0.20 / 0.50 | 86.0 / 0.10 / 0.50 |" in both
    assert tables.means_table(cells, ["icl", "zero-shot"]) == "", "no row has both"
