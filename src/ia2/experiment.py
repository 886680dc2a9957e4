"""One comparison run, as a recipe: claim the output folder, set up, then per seed draw the split, score the
baselines, collect the teacher's targets, train and evaluate every method, and write each row as it is measured."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from . import adapters, config, distributed, models, outdir
from .card import adapter_files
from .config import RunConfig
from .context import RunContext, load_context
from .manifest import manifest
from .measure import SeedEval, dev_accuracy, evaluate, result_row, seed_eval
from .methods import METHODS
from .paths import write_json
from .results import write_reports
from .splits import Split, draw_split, majority
from .stages import StageData, StageRunner, stage_data
from .taps import Tap
from .tracking import check_available, tracked

log = logging.getLogger(__name__)
# A trained method's metrics sent to the trackers.
FINAL = ("accuracy", "ece", "ece_equal_mass", "brier", "nll", "asim", "dev_accuracy", "parse_failure_rate")


def run(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict:
    """Run every seed and method, resuming from the (seed, method) rows already written under the same config (each
    is written as soon as it is measured); write the reports.

    With several processes (sharing `out`) every process runs every seed and method on its share of the data; the
    main process alone writes, and decides what is left to do.
    """
    distributed.check_launch(cfg)
    check_available(cfg)
    outdir.claim(out, cfg, overwrite)
    ctx = load_context(cfg)
    with tracked(ctx, out / "trackers", out.name or "ia2"):
        return _run(ctx, cfg, out)


def _run(ctx: RunContext, cfg: RunConfig, out: Path) -> dict:
    """`run` once set up: every seed's missing rows, then the run's files."""
    names = [ev.task.name for ev in ctx.evals]
    rows = []
    for seed in tqdm(cfg.seeds, desc="seeds"):
        paths = {
            (m, e): outdir.rows_dir(out, cfg) / outdir.row_file(seed, m, e, ctx.task.name)
            for m in cfg.methods
            for e in names
        }
        todo = distributed.from_main(list(dict.fromkeys(m for (m, _), path in paths.items() if not path.exists())))
        reused = [m for m in cfg.methods if m not in todo]
        if reused:
            log.info("seed %d: reusing the finished rows of %s", seed, ", ".join(reused))
        if todo:
            for measured in run_seed(ctx, out, seed, todo):
                if distributed.is_main():
                    for row in measured:
                        write_json(paths[row["method"], row["eval_task"]], row)
            distributed.barrier()
        rows += [json.loads(paths[m, e].read_text()) for m in cfg.methods for e in names]
    result = {
        "config": {**config.to_dict(cfg), "resolved_model": models.resolve(cfg.model), "key": config.key(cfg)},
        "majority_accuracy": {ev.task.name: majority(ev.task, ev.test) for ev in ctx.evals},
        "n_test": {ev.task.name: len(ev.test) for ev in ctx.evals},
        "rows": [{k: v for k, v in r.items() if k != "train"} for r in rows],
    }
    if distributed.is_main():
        write_outputs(result, rows, ctx, out)
    distributed.barrier()
    return result


def run_seed(ctx: RunContext, out: Path, seed: int, methods: list[str]) -> Iterator[list[dict]]:
    """One seed's rows as they are measured, so that each can be written at once: the baselines on the base
    model, then each trained method, on every evaluation set."""
    split = draw_split(ctx.test, ctx.pool, ctx.cfg.data, seed, ctx.unlabelled)
    ctx.model = adapters.fresh(ctx.model, ctx.cfg.adapter, seed)
    evals = [seed_eval(ctx, ev, split, seed) for ev in ctx.evals]
    yield [r for se in evals for r in baseline_rows(ctx, seed, se) if r["method"] in methods]
    trained = [m for m in methods if not METHODS[m].baseline]
    if trained:
        data = stage_data(ctx, split, seed, trained)
        runner = StageRunner(ctx, data, seed)
        for method in trained:
            logs = runner.train(METHODS[method].stages)
            yield method_rows(ctx, method, seed, evals, logs, data, split, out)


def baseline_rows(ctx: RunContext, seed: int, se: SeedEval) -> list[dict]:
    """ICL (with demonstrations) and zero-shot rows of one evaluation set; zero-shot is scored once per run."""
    name = se.eval.task.name
    with ctx.model.disable_adapter():
        icl, se.icl = evaluate(ctx, se, se.icl_prompts, f"icl s{seed}")
        if name not in ctx.zero_shot:
            ctx.zero_shot[name] = evaluate(ctx, se, se.plain, "zero-shot")
    return [
        result_row(ctx, "icl", seed, se, icl, se.icl, se.k),
        result_row(ctx, "zero-shot", seed, se, *ctx.zero_shot[name], 0),
    ]


def method_rows(
    ctx: RunContext,
    method: str,
    seed: int,
    evals: list[SeedEval],
    logs: list[dict],
    data: StageData,
    split: Split,
    out: Path,
) -> list[dict]:
    """A trained method's rows on the dev set and every evaluation set without demonstrations, then its adapter
    and model card."""
    with evaluated(ctx):
        extra = {"dev_accuracy": dev_accuracy(ctx, data.dev_plain, f"{method} dev s{seed}"), "train": logs}
        rows = []
        for se in evals:
            measured, acts = evaluate(ctx, se, se.plain, f"{method} s{seed}")
            rows.append({**result_row(ctx, method, seed, se, measured, acts, 0), **extra})
            log.info("seed %d %-9s %s accuracy %.3f", seed, method, se.eval.task.name, rows[-1]["accuracy"])
    if ctx.tracking is not None:
        for row in rows:
            final = {k: row[k] for k in FINAL if isinstance(row.get(k), float)}
            ctx.tracking.reporter(f"seed{seed}/{method}/{row['eval_task']}")(final, 0)
    if ctx.cfg.runtime.save_adapters and distributed.is_main():
        files = adapter_files(ctx, method, seed, rows, logs, split, data.teacher_key)
        adapters.save(ctx.model, out / "adapters" / f"seed{seed}" / method, ctx.cfg.model, files)
    return rows


@contextmanager
def evaluated(ctx: RunContext) -> Iterator[None]:
    """Evaluate the trained adapter as it is or, with merge_bf16 (reference parity), merged into a bf16 copy."""
    if not ctx.cfg.runtime.merge_bf16:
        yield
        return
    trained, tap = ctx.model, ctx.tap
    ctx.model = adapters.merged_bf16(trained)
    ctx.tap = Tap(ctx.model, ctx.cfg.teacher.site, ctx.cfg.teacher.layers)
    try:
        yield
    finally:
        ctx.model, ctx.tap = trained, tap


def write_outputs(result: dict, rows: list[dict], ctx: RunContext, out: Path) -> None:
    """The run's manifest, training logs and reports."""
    write_json(out / "manifest.json", manifest(ctx.cfg, ctx))
    write_json(
        out / "train_logs.json",
        [
            {"seed": r["seed"], "method": r["method"], "stages": r["train"]}
            for r in rows
            if "train" in r and r["eval_task"] == ctx.task.name
        ],
    )
    write_reports(result, out)
