"""`ia2 report DIR`: tables, curves, significance tests and analyses of a sweep or run, regenerated from its rows."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ia2 import config
from ia2.paths import write_json, write_text
from ia2.registry import METHODS
from ia2.reporting import aggregate, analysis, diagnostics, overlaps, paired, plots, preregistered, tables
from ia2.training.methods import HEADLINE, display

SETTING = ("model", "data.task", "data.n_train", "data.eval_tasks")
# The settings that define a protocol: a report states them whether or not they are ia2's defaults.
PROTOCOL = (
    "data.n_test",
    "data.n_dev",
    "prompt.k_max",
    "train.train_batch_size",
    "train.max_epochs",
    "train.max_steps",
    "train.eval_every",
    "train.patience",
    "train.restore_best",
)


def _flat(condition: str) -> dict:
    """A condition's settings by dotted path (sections and the adapter mapping flattened)."""
    out = {}
    for k, v in json.loads(condition).items():
        out.update({f"{k}.{inner}": x for inner, x in v.items()} if isinstance(v, dict) else {k: v})
    return out


def _task_bound(flat: dict[str, dict]) -> set[str]:
    """Settings that go with the task: within each task every condition has the same value (a grid value such as
    `{task: strategyqa@bigbench, answer_prefix: ""}`), so they describe the task, not a variant of the method."""
    values: dict[tuple, set[str]] = defaultdict(set)
    for f in flat.values():
        for k, v in f.items():
            values[f["data.task"], k].add(json.dumps(v, sort_keys=True))
    keys, tasks = {k for f in flat.values() for k in f}, {f["data.task"] for f in flat.values()}
    return {k for k in keys if all(len(values[task, k]) == 1 for task in tasks)}


def _distinct(conditions: Iterable[str]) -> dict[str, dict]:
    """Each condition's settings besides model, task, N and the settings that go with the task."""
    flat = {c: _flat(c) for c in set(conditions)}
    skip = set(SETTING) | _task_bound(flat)
    return {c: {k: v for k, v in f.items() if k not in skip} for c, f in flat.items()}


def variant_keys(conditions: Iterable[str]) -> dict[str, str]:
    """For each condition, as JSON, what separates it from otherwise identical settings (adapter kind, demo policy,
    …): the key that groups conditions into one table and one pooled test."""
    return {c: json.dumps(f, sort_keys=True) for c, f in _distinct(conditions).items()}


def variants(conditions: Iterable[str]) -> dict[str, str]:
    """The same as short text naming only the settings that differ between conditions; "" when nothing does."""
    distinct = _distinct(conditions)
    keys = sorted({k for f in distinct.values() for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in distinct.values()}) > 1]
    return {c: ", ".join(f"{k}={f.get(k)}" for k in varying) for c, f in distinct.items()}


def _variant_names(keys: dict[str, str]) -> dict[str, str]:
    """Each variant key's short text, as `variants` names its conditions."""
    names = variants(keys)
    return {key: names[condition] for condition, key in keys.items()}


def protocol(rows: list[dict]) -> str:
    """The protocol as run: seeds, what was tuned on dev and over which values, the grid's models, tasks and N, the
    `PROTOCOL` settings and every other setting all runs share where it differs from ia2's defaults (so that a cut
    such as a smaller test set is stated, not silent)."""
    flats = [_flat(c) for c in sorted({r["condition"] for r in rows})]
    known, dump = config.paths(), lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
    shared = {
        k: v
        for k, v in flats[0].items()
        if k in known
        and k not in SETTING
        and all(dump(f.get(k)) == dump(v) for f in flats)
        and (k in PROTOCOL or dump(v) != dump(config.default(k)))
    }
    tuned: dict[str, set] = defaultdict(set)
    for r in rows:
        for k, v in r["tuned"].items():
            tuned[k].add(v)
    grid = {
        name: sorted({str(f[k]) for f in flats if k in f}) for name, k in (("models", "model"), ("tasks", "data.task"))
    }
    lines = [
        f"- Seeds: {', '.join(map(str, sorted({r['seed'] for r in rows})))}; N: "
        + ", ".join(map(str, sorted({r["n_train"] for r in rows}))),
        *(f"- {name.capitalize()}: {', '.join(values)}" for name, values in grid.items()),
        *(
            f"- Tuned per (condition, method) on dev: `{k}` ∈ {{{', '.join(map(str, sorted(v)))}}}"
            for k, v in tuned.items()
        ),
        "- Settings of every run (the protocol's, and any other that differs from ia2's defaults): "
        + (", ".join(f"`{k}` = {dump(v)}" for k, v in sorted(shared.items())) or "none"),
        _code(rows),
    ]
    return "\n## Protocol\n\n" + "\n".join(lines) + "\n"


def _code(rows: list[dict]) -> str:
    """The code the runs were made by, as their manifests record it: ia2's version and the git commit that finished
    each run (a resumed run's earlier rows may come from another), with how many runs each made (a run without a
    manifest, unfinished or older, counted as not recorded)."""
    made: Counter[str] = Counter()
    for run in sorted({r["run"] for r in rows}):
        path = Path(run) / "manifest.json"
        recorded = json.loads(path.read_text()) if path.exists() else {}
        commit = (recorded.get("git_commit") or "")[:7] or "no commit recorded"
        made[f"ia2 {recorded.get('versions', {}).get('ia2', '?')}, {commit}" if recorded else "not recorded"] += 1
    return "- Code (the commit that finished each run, from its manifest): " + ", ".join(
        f"{code} ({n} run{'s' * (n > 1)})" for code, n in made.items()
    )


def _slug(*parts: object) -> str:
    return "__".join(str(p).replace("/", "_").replace(":", "_").replace("@", "_") for p in parts)


def write(folder: Path, select_by: str | None = None) -> str:
    """Write report.md, tables.tex, summary.json and figures/ under `folder`; return the markdown."""
    select_by = select_by or _sweep_setting(folder, "select", "dev_loss")
    rows = aggregate.load_rows(folder)
    kept, choices = aggregate.select(rows, select_by)
    cells = aggregate.cells(kept)
    tests = aggregate.paired_test(kept, *HEADLINE)
    keys = variant_keys(r["condition"] for r in rows)
    pooled = _pooled(kept, keys)
    _attach_p_values(cells, tests)
    present = {c["method"] for c in cells}
    methods = [m for m in METHODS if m in present]
    figures = folder / "figures"
    runs = {r["condition"]: r["run"] for r in kept}
    md, tex = _tables(cells, methods, select_by, pooled, runs, keys, protocol(rows)), _latex(cells, methods, keys)
    declared = _sweep_setting(folder, "tests", {})
    planned = (
        preregistered.measure(preregistered.parse(declared, tuple(METHODS), str(folder)), kept) if declared else []
    )
    md += "\n" + preregistered.markdown(planned) if planned else ""
    names = variants(r["condition"] for r in kept)
    pair_tests, stages = paired.pair_tests(kept), diagnostics.stage_summary(kept)
    icl_draws = diagnostics.icl_draws(kept)
    md += paired.section(pair_tests, names) + diagnostics.section(stages, icl_draws, names)
    md += _figures(kept, cells, figures, folder, keys)
    records = overlaps.overlap_records(rows, folder)
    md += overlaps.section(kept, folder, figures, records, names)
    write_text(folder / "report.md", md)
    write_text(folder / "tables.tex", tex)
    summary = {"select": select_by, "choices": choices, "cells": cells, "tests": tests, "pooled_tests": pooled}
    summary |= {"method_pair_tests": pair_tests, "stages": stages, "icl_draws": icl_draws}
    write_json(folder / "summary.json", summary | ({"preregistered": planned} if planned else {}))
    return md


def _summaries(cells: list[dict], methods: list[str], suffix: str) -> str:
    """The means over tasks and the headline pair's paired tests of one variant's cells (`suffix` names it)."""
    text, means = "", tables.means_table(cells, methods)
    if means:
        text += (
            f"\n## Means over tasks{suffix}\n\nAccuracy in percent / ECE / asim (mean cosine to ICL's activations "
            "over layers), each a mean over the rows where every method has a result.\n\n" + means
        )
    if all(any(c["method"] == m for c in cells) for m in HEADLINE):
        against = " against ".join(display(m) for m in HEADLINE)
        text += f"\n## {against}, paired over seeds{suffix}\n\n" + tables.significance_table(cells) + "\n"
    return text


def _pooled(kept: list[dict], keys: dict[str, str]) -> list[dict]:
    """IA2 → SFT against SFT over every in-distribution (task, seed) of a model, N and variant, then over all its N
    (n_train "all") where several were tested: evaluations of the same adapters on out-of-distribution sets are not
    independent pairs, so they are left out."""
    own = [{**r, "variant": keys[r["condition"]]} for r in kept if r["eval_task"] == r["task"]]
    tests = []
    for metric in ("accuracy", "ece"):
        per_n = aggregate.paired_test(own, *HEADLINE, metric=metric, by=("model", "variant", "n_train"))
        several = Counter((t["model"], t["variant"]) for t in per_n)
        all_n = [
            {**t, "n_train": "all"}
            for t in aggregate.paired_test(own, *HEADLINE, metric=metric, by=("model", "variant"))
            if several[t["model"], t["variant"]] > 1
        ]
        tests += sorted(
            per_n + all_n,
            key=lambda t: (
                t["model"],
                t["variant"],
                t["n_train"] == "all",
                0 if t["n_train"] == "all" else t["n_train"],
            ),
        )
    return tests


def _sweep_setting(folder: Path, key: str, default: object) -> object:
    path = folder / "sweep.json"
    return json.loads(path.read_text()).get(key, default) if path.exists() else default


def _attach_p_values(cells: list[dict], tests: list[dict]) -> None:
    """Give each cell of the headline's tested method (IA2 → SFT) its test against the other (SFT): `p_one_sided`
    (the tested method better) and `p_two_sided`."""
    by = {(t["model"], t["task"], t["eval_task"], t["n_train"], t["condition"]): t for t in tests}
    for c in cells:
        if c["method"] == HEADLINE[0]:
            test = by.get((c["model"], c["task"], c["eval_task"], c["n_train"], c["condition"]), {})
            c.update({key: test.get(key) for key in ("p_one_sided", "p_two_sided")})


def _by_table(cells: list[dict], keys: dict[str, str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        groups[c["model"], keys[c["condition"]], c["n_train"]].append(c)
    return dict(sorted(groups.items()))


def _majority(cells: list[dict], runs: dict[str, str]) -> dict[str, float]:
    """Each evaluation set's majority-class rate as its runs recorded it in results.json (written when a run
    finishes; None for generative tasks)."""
    rates: dict[str, float] = {}
    for run in dict.fromkeys(runs[c["condition"]] for c in cells):
        path = Path(run) / "results.json"
        recorded = json.loads(path.read_text())["majority_accuracy"] if path.is_file() else {}
        rates.update({task: rate for task, rate in recorded.items() if rate is not None and task not in rates})
    return {c["eval_task"]: rates[c["eval_task"]] for c in cells if c["eval_task"] in rates}


def _tables(
    cells: list[dict],
    methods: list[str],
    select_by: str,
    pooled: list[dict],
    runs: dict[str, str],
    keys: dict[str, str],
    protocol_text: str = "",
) -> str:
    text = (
        f"# Results\n\nAccuracy in percent (std over seeds) / ECE (15 equal-width bins, label-renormalised), "
        f"best trained method in bold, `*` out of distribution. Hyperparameters chosen per method on "
        f"{select_by.replace('_', ' ')} (mean over seeds)"
        + (
            " — ON TEST DATA, for parity with the reference code only.\n"
            if select_by == "test_accuracy"
            else ", never on test data.\n"
        )
        + protocol_text
    )
    names = variants([c["condition"] for c in cells])
    for (model, var, n), group in _by_table(cells, keys).items():
        extra = names[group[0]["condition"]]
        text += (
            f"\n## {model}, N = {n}{', ' + extra if extra else ''}\n\n"
            + tables.markdown_table(group, methods, n)
            + "\n"
        )
        known = [f"{t} {r:.1%}" for t, r in _majority(group, runs).items()]
        text += ("\nMajority-class rate of the test sets: " + "; ".join(known) + ".\n") if known else ""
        text += _incomplete(group, max(c["n_seeds"] for c in cells))
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        by_variant[keys[c["condition"]]].append(c)
    for group in by_variant.values():
        extra = names[group[0]["condition"]]
        text += _summaries(group, methods, f", {extra}" if extra else "")
    if pooled:
        text += (
            f"\n## Pooled over tasks and seeds (paired t-test, {' minus '.join(map(display, HEADLINE))})\n\n"
            "In-distribution rows only: "
            "out-of-distribution evaluations reuse the same adapters. N = all pools every N of a model. With the tasks "
            "as the unit: the one-sided test of the tasks' mean differences, where several tasks are pooled.\n\n"
        )
        named = _variant_names(keys)
        text += (
            f"| model | N | metric | pairs | mean difference | 95% CI | d_z | t "
            f"| p (one-sided, {display(HEADLINE[0]).replace(' ', '')} better) | p (two-sided) "
            "| tasks | p (tasks as unit) |\n" + "|---" * 12 + "|\n"
        )
        for t in pooled:
            unit = (t["tasks_as_unit"] or {}).get("p_one_sided")
            stat, d, one, two, by_task = (
                "–" if v is None else f"{v:.3g}" for v in (t["t"], t["d_z"], t["p_one_sided"], t["p_two_sided"], unit)
            )
            ci = "–" if t["ci95"] is None else f"[{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}]"
            model = t["model"] + (f" ({named[t['variant']]})" if named[t["variant"]] else "")
            text += (
                f"| {model} | {t['n_train']} | {t['metric']} | {t['pairs']} | {t['mean_difference']:+.3f} | {ci} "
                f"| {d} | {stat} | {one} | {two} | {t['tasks']} | {by_task} |\n"
            )
    return text


def _incomplete(group: list[dict], most: int) -> str:
    """A note naming the cells that have fewer seeds than the fullest cell of the report (a sweep still running)."""
    short = sorted({(c["eval_task"], c["n_seeds"]) for c in group if c["n_seeds"] < most})
    if not short:
        return ""
    return f"\nFewer than {most} seeds so far: " + "; ".join(f"{t} ({k})" for t, k in short) + ".\n"


def _latex(cells: list[dict], methods: list[str], keys: dict[str, str]) -> str:
    parts = []
    for (model, var, n), group in _by_table(cells, keys).items():
        caption = f"{model.replace('_', chr(92) + '_')}, $N={n}$: accuracy (std) / ECE (std); $^*$ out of distribution."
        parts.append(tables.latex_table(group, methods, n, caption))
    return "\n\n".join(parts) + "\n"


def _figures(rows: list[dict], cells: list[dict], figures: Path, folder: Path, keys: dict[str, str]) -> str:
    """Accuracy against N per (model, task, variant) and each run's layer-similarity and reliability figures; with
    several variants a figure's name ends in the variant's number (`__v1`), as its line says."""
    text = "\n## Figures\n\n"
    numbers = {v: i for i, v in enumerate(sorted(set(keys.values())))}
    tag = lambda var: (f"v{numbers[var]}",) if len(numbers) > 1 else ()  # noqa: E731
    named = _variant_names(keys)
    settings: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        settings[c["model"], c["task"], c["eval_task"], keys[c["condition"]]].append(c)
    for (model, task, eval_task, var), group in sorted(settings.items()):
        if len({c["n_train"] for c in group}) > 1:
            path = figures / f"accuracy_vs_n__{_slug(model, task, eval_task, *tag(var))}.png"
            plots.plot_accuracy_vs_n(group, path)
            extra = f" ({named[var]})" if named[var] else ""
            text += f"- accuracy against N, {model}, {eval_task}{extra}: `{path.relative_to(folder)}`\n"
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        runs[r["model"], r["task"], r["eval_task"], r["n_train"], keys[r["condition"]]].append(r)
    for (model, task, eval_task, n, var), mine in sorted(runs.items()):
        stem = _slug(model, eval_task, f"n{n}", *tag(var))
        if any(r.get("asim_layers") for r in mine):
            plots.plot_layer_similarity(analysis.layer_similarity(mine), figures / f"layer_similarity__{stem}.png")
        scored = [r for r in mine if r.get("reliability")]  # generative rows have no answer distribution
        per_method = {
            m: _pooled_reliability([r for r in scored if r["method"] == m])
            for m in dict.fromkeys(r["method"] for r in scored)
        }
        if per_method:
            plots.plot_reliability(per_method, figures / f"reliability__{stem}.png")
    text += "- per run: `figures/layer_similarity__*.png` (cosine to ICL per layer), `figures/reliability__*.png`\n"
    return text


def _pooled_reliability(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    conf = np.concatenate([r["reliability"]["confidence"] for r in rows])
    correct = np.concatenate([r["reliability"]["correct"] for r in rows])
    return conf, correct
