"""Result tables in the paper's layout (markdown and LaTeX) and the headline pair's significance table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ia2.errors import IA2Error
from ia2.training.methods import HEADLINE, baselines, display

_LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"}

TableLine = tuple[str, str, dict[str, dict]]


def _escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(c, c) for c in text)


def _latex_name(method: str) -> str:
    return _escape(display(method)).replace("→", r"$\rightarrow$")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _dec(x: float) -> str:
    return f"{x:.2f}"


def _rows(cells: Sequence[dict], methods: Sequence[str], n: int) -> list[TableLine]:
    """(task, eval_task, {method: cell}) per table row; sources in first-seen order, in-distribution row first."""
    chosen = [c for c in cells if c["n_train"] == n and c["method"] in methods]
    if not chosen:
        raise IA2Error(f"no cells for N={n} and methods {', '.join(methods)}")
    models = sorted({c["model"] for c in chosen})
    if len(models) > 1:
        raise IA2Error(f"cells for N={n} span models {', '.join(models)}: make one table per model")
    table: dict[tuple[str, str], dict[str, dict]] = {}
    for c in chosen:
        row = table.setdefault((c["task"], c["eval_task"]), {})
        if c["method"] in row:
            raise IA2Error(f"two cells for {c['method']} on {c['task']} → {c['eval_task']} at N={n}")
        row[c["method"]] = c
    sources = dict.fromkeys(task for task, _ in table)
    return [
        (task, ev, table[task, ev])
        for task in sources
        for ev in sorted((e for t, e in table if t == task), key=lambda e: e != task)
    ]


def _groups(rows: list[TableLine]) -> list[list[TableLine]]:
    """Consecutive rows of the same source task."""
    groups: list[list[TableLine]] = []
    for row in rows:
        if groups and groups[-1][0][0] == row[0]:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _best(row: dict[str, dict], key: str, fmt: Callable[[float], str], pick: Callable) -> str | None:
    """The displayed best value of `key` among trained methods in the row (None when none has one)."""
    values = [c[key] for m, c in row.items() if m not in baselines() and c.get(key) is not None]
    return fmt(pick(values)) if values else None


def _part(
    mean: float, std: float | None, fmt: Callable[[float], str], best: str | None, bold: Callable[[str], str]
) -> str:
    text = bold(fmt(mean)) if fmt(mean) == best else fmt(mean)
    return text if std is None else f"{text} ({fmt(std)})"


def _cell(
    cell: dict | None, best_acc: str | None, best_ece: str | None, bold: Callable[[str], str], missing: str
) -> str:
    """'acc (std) / ECE (std)', accuracy in percent, the best trained values in bold; 'acc (std)' without ECE."""
    if cell is None or cell.get("accuracy_mean") is None:
        return missing
    acc = _part(cell["accuracy_mean"], cell.get("accuracy_std"), _pct, best_acc, bold)
    if cell.get("ece_mean") is None:
        return acc
    return f"{acc} / {_part(cell['ece_mean'], cell.get('ece_std'), _dec, best_ece, bold)}"


def _row_cells(row: dict[str, dict], methods: Sequence[str], bold: Callable[[str], str], missing: str) -> list[str]:
    best_acc, best_ece = _best(row, "accuracy_mean", _pct, max), _best(row, "ece_mean", _dec, min)
    return [
        _cell(row.get(m), None if m in baselines() else best_acc, None if m in baselines() else best_ece, bold, missing)
        for m in methods
    ]


def markdown_table(cells: Sequence[dict], methods: Sequence[str], n: int) -> str:
    """One model's results at N: a row per (source, eval) task, a column per method; * marks OOD evaluation."""
    lines = [
        "| source | eval | " + " | ".join(display(m) for m in methods) + " |",
        "|---" * (len(methods) + 2) + "|",
    ]
    for group in _groups(_rows(cells, methods, n)):
        for i, (task, ev, row) in enumerate(group):
            label = [task if i == 0 else "", ev + ("*" if ev != task else "")]
            lines.append("| " + " | ".join(label + _row_cells(row, methods, lambda s: f"**{s}**", "–")) + " |")
    return "\n".join(lines) + "\n"


def _latex_group(group: list[TableLine], methods: Sequence[str]) -> list[str]:
    """Body lines of one source task; its name spans the group's rows with \\multirow."""
    lines = []
    for i, (task, ev, row) in enumerate(group):
        name = _escape(task)
        source = "" if i else (rf"\multirow{{{len(group)}}}{{*}}{{{name}}}" if len(group) > 1 else name)
        label = [source, _escape(ev) + ("$^*$" if ev != task else "")]
        lines.append(" & ".join(label + _row_cells(row, methods, lambda s: rf"\textbf{{{s}}}", "--")) + r" \\")
    return lines


def latex_table(cells: Sequence[dict], methods: Sequence[str], n: int, caption: str) -> str:
    """The markdown table as a booktabs `table*` (needs booktabs, multirow, graphicx); `caption` is raw LaTeX."""
    body = [
        line
        for i, group in enumerate(_groups(_rows(cells, methods, n)))
        for line in ([r"\midrule"] if i else []) + _latex_group(group, methods)
    ]
    return (
        "\n".join(
            [
                r"\begin{table*}[t]",
                r"\centering",
                rf"\caption{{{caption}}}",
                r"\resizebox{\textwidth}{!}{%",
                rf"\begin{{tabular}}{{ll{'c' * len(methods)}}}",
                r"\toprule",
                "Source & Eval & " + " & ".join(_latex_name(m) for m in methods) + r" \\",
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}}",
                r"\end{table*}",
            ]
        )
        + "\n"
    )


def p_value(value: float | None) -> str:
    """A p-value as the tables print it ("–" when undefined)."""
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def difference(test: dict | None) -> str:
    """A paired test's mean difference in points with its 95% CI ("–" when there is none)."""
    if test is None or test.get("mean_difference") is None:
        return "–"
    ci = test.get("ci95")
    interval = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
    return f"{100 * test['mean_difference']:+.1f}{interval}"


def _headline_pairs(cells: Sequence[dict]) -> dict[tuple, dict[str, dict]]:
    """The cells of the headline pair (`methods.HEADLINE`: IA2 → SFT and SFT) of each (model, task, eval_task, N)."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for c in cells:
        if c["method"] in HEADLINE and c.get("accuracy_mean") is not None:
            pair = pairs.setdefault((c["model"], c["task"], c["eval_task"], c["n_train"]), {})
            if c["method"] in pair:
                where = f"{c['model']} {c['task']} → {c['eval_task']} at N={c['n_train']}"
                raise IA2Error(f"two {c['method']} cells for {where}")
            pair[c["method"]] = c
    return pairs


def significance_table(cells: Sequence[dict]) -> str:
    """The headline pair per (model, task, eval_task, N), e.g. SFT only vs IA2 → SFT: accuracies, their difference
    in points and the paired test's p-values (the tested cell's `p_one_sided`, it more accurate, and
    `p_two_sided`)."""
    tested, against = HEADLINE
    lines = [
        f"| model | source | eval | N | {display(against)} | {display(tested)} | Δ accuracy "
        f"| p (one-sided, {display(tested).replace(' ', '')} better) | p (two-sided) |",
        "|---" * 9 + "|",
    ]
    for (model, task, ev, n), pair in _headline_pairs(cells).items():
        if len(pair) < 2:
            continue
        base, both = pair[against], pair[tested]
        accs = [_part(c["accuracy_mean"], c.get("accuracy_std"), _pct, None, str) for c in (base, both)]
        delta = f"{100 * (both['accuracy_mean'] - base['accuracy_mean']):+.1f}"
        ood = "*" if ev != task else ""
        ps = " | ".join(p_value(both.get(key)) for key in ("p_one_sided", "p_two_sided"))
        lines.append(f"| {model} | {task} | {ev}{ood} | {n} | {' | '.join(accs)} | {delta} | {ps} |")
    if len(lines) == 2:
        raise IA2Error(f"no (model, task, eval_task, N) has both a {against} and a {tested} cell")
    return "\n".join(lines) + "\n"


def _mean_part(values: list[float | None], fmt: Callable[[float], str]) -> str:
    return "–" if any(v is None for v in values) else fmt(sum(values) / len(values))


def means_table(cells: Sequence[dict], methods: Sequence[str]) -> str:
    """Each method's accuracy / ECE / asim averaged over the (source, eval) rows of a model and N where every method
    has an accuracy, in-distribution and out-of-distribution rows apart (as the paper's averages are taken); empty
    when no row has every method."""
    groups: dict[tuple, dict[tuple[str, str], dict[str, dict]]] = {}
    for c in cells:
        if c["method"] in methods and c.get("accuracy_mean") is not None:
            key = (c["model"], c["n_train"], c["eval_task"] != c["task"])
            groups.setdefault(key, {}).setdefault((c["task"], c["eval_task"]), {})[c["method"]] = c
    lines = [
        "| model | N | rows | " + " | ".join(display(m) for m in methods) + " |",
        "|---" * (len(methods) + 3) + "|",
    ]
    for (model, n, ood), rows in sorted(groups.items()):
        full = [row for row in rows.values() if all(m in row for m in methods)]
        if not full:
            continue
        parts = [
            " / ".join(
                _mean_part([row[m].get(k) for row in full], f)
                for k, f in (("accuracy_mean", _pct), ("ece_mean", _dec), ("asim_mean", _dec))
            )
            for m in methods
        ]
        lines.append(f"| {model} | {n} | {len(full)}{' OOD*' if ood else ''} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""
