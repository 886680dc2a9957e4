"""One comparison run, as a recipe: claim the output folder, set up, then per seed draw the split, score the
baselines and collect the teacher's targets, then train every method for every seed (packed) and evaluate it,
writing each row as it is measured. A sweep cell (runs that differ only in learning rate) runs the same way, once."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from . import adapters, config, distributed, lock, models, outdir
from .card import adapter_files, divergences
from .config import RunConfig
from .context import RunContext, load_context
from .errors import IA2Error
from .manifest import manifest
from .measure import SeedEval, cached_evaluate, dev_accuracy, evaluate, mean_row, result_row, seed_eval
from .methods import METHODS
from .paths import check_output, write_json
from .results import write_reports
from .splits import Split, draw_split, majority
from .stages import StageData, StageRunner, Trainee, stage_data
from .taps import Tap
from .tracking import check_available, tracked
from .train import adapter_state

log = logging.getLogger(__name__)
# A trained method's metrics sent to the trackers.
FINAL = ("accuracy", "ece", "ece_equal_mass", "brier", "nll", "asim", "dev_accuracy", "parse_failure_rate")


@dataclass(frozen=True)
class Member:
    """One run of a cell: its config and output folder. The runs of a cell differ only in their learning rate."""

    cfg: RunConfig
    out: Path


def run(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict:
    """Run every seed and method, resuming from the (seed, method) rows already written under the same config (each
    is written as soon as it is measured); write the reports. The seeds' adapters train in packs (`runtime.pack`)."""
    return run_cell([Member(cfg, out)], overwrite)[0]


def run_cell(members: Sequence[Member], overwrite: bool = False) -> list[dict]:
    """Run several runs that differ only in learning rate (a sweep cell) on one loaded model: their baselines and the
    teacher's targets are computed once per seed, and every adapter they train, each seed at each learning rate, is
    trained in packs of `runtime.pack`. Each run resumes, writes and reports as it would alone.

    With several processes (sharing the folders) every process runs every seed and method on its share of the data;
    the main process alone writes, and decides what is left to do.
    """
    first = members[0].cfg
    for member in members:
        distributed.check_launch(member.cfg)
        check_available(member.cfg)
        if replace(member.cfg, train=replace(member.cfg.train, lr=first.train.lr)) != first:
            raise IA2Error(f"{member.out}: the runs of a cell may differ only in their learning rate")
        check_output(member.out, folder=True)
    with lock.holding([lock.inside(member.out) for member in members]):
        for member in members:
            outdir.claim(member.out, member.cfg, overwrite)
        ctx = load_context(first)
        out = members[0].out
        with tracked(ctx, out / "trackers", out.name or "ia2"):
            return _run(ctx, members)


def _row_paths(ctx: RunContext, member: Member, seed: int) -> dict[tuple[str, str], Path]:
    """Where each (method, evaluation set) row of one seed of a run goes."""
    folder = outdir.rows_dir(member.out, member.cfg)
    names = [ev.task.name for ev in ctx.evals]
    return {(m, e): folder / outdir.row_file(seed, m, e, ctx.task.name) for m in member.cfg.methods for e in names}


def _run(ctx: RunContext, members: Sequence[Member]) -> list[dict]:
    """`run_cell` once set up, in three phases: per seed the split, the baselines and the teacher's targets; then each
    trained method for every (run, seed) that lacks it, packed; then each run's files."""
    todo = _todo(ctx, members)
    prepared = _prepare(ctx, members, todo)
    _train_methods(ctx, members, todo, prepared)
    return [_finish(replace(ctx, cfg=member.cfg), member) for member in members]


def _todo(ctx: RunContext, members: Sequence[Member]) -> dict[tuple[int, int], list[str]]:
    """Per (run index, seed), the methods whose rows are missing, as the main process sees them; logs the reused."""
    todo = {}
    for m, member in enumerate(members):
        for seed in ctx.cfg.seeds:
            paths = _row_paths(ctx, member, seed).items()
            missing = [method for (method, _), path in paths if outdir.read_intact(path) is None]
            todo[m, seed] = distributed.from_main(list(dict.fromkeys(missing)))
            reused = [method for method in ctx.cfg.methods if method not in todo[m, seed]]
            if reused:
                log.info("%sseed %d: reusing the finished rows of %s", _who(members, m), seed, ", ".join(reused))
    return todo


def _prepare(
    ctx: RunContext, members: Sequence[Member], todo: dict[tuple[int, int], list[str]]
) -> dict[int, PreparedSeed]:
    """Every seed with work left, prepared (`prepare_seed`), its baseline rows written to the runs that lack them."""
    runs = range(len(members))
    seeds = [seed for seed in ctx.cfg.seeds if any(todo[m, seed] for m in runs)]
    prepared = {}
    with tqdm(seeds, desc="seeds", leave=False) as bar:  # closed on an error too, so its line is not left open
        for seed in bar:
            prepared[seed] = prepare_seed(ctx, seed, [todo[m, seed] for m in runs])
            for m in runs:
                _write(ctx, members[m], seed, [r for r in prepared[seed].baselines if r["method"] in todo[m, seed]])
    return prepared


def _train_methods(
    ctx: RunContext,
    members: Sequence[Member],
    todo: dict[tuple[int, int], list[str]],
    prepared: dict[int, PreparedSeed],
) -> None:
    """Each trained method, in the config's order, for every (run, seed) lacking it, one at a time; each adapter
    evaluated and its rows written as soon as it is trained, so an interruption loses at most one adapter's work."""
    trainees = {
        (m, seed): Trainee.fresh(seed, member.cfg.train, prep.data, prep.start)
        for m, member in enumerate(members)
        for seed, prep in prepared.items()
        if prep.data is not None
    }
    runner = StageRunner(ctx, list(trainees.values()), ctx.cfg.runtime.pack)
    for method in [name for name in ctx.cfg.methods if not METHODS[name].baseline]:
        stages = METHODS[method].stages
        for m, seed in [key for key in trainees if method in todo[key]]:
            runner.train(stages, [trainees[m, seed]])
            runner.load(trainees[m, seed], stages)
            logs = trainees[m, seed].memo[stages][1]
            rows = method_rows(replace(ctx, cfg=members[m].cfg), method, seed, logs, prepared[seed], members[m].out)
            _write(ctx, members[m], seed, rows)


def _who(members: Sequence[Member], m: int) -> str:
    """A log line's prefix naming the run, when a cell has several."""
    return f"lr {members[m].cfg.train.lr:g}: " if len(members) > 1 else ""


def _write(ctx: RunContext, member: Member, seed: int, rows: Sequence[dict]) -> None:
    """Write rows of one seed of a run, each atomically, as soon as they are measured (the main process)."""
    paths = _row_paths(ctx, member, seed)
    if distributed.is_main():
        for row in rows:
            write_json(paths[row["method"], row["eval_task"]], row)
    distributed.barrier()


def _finish(ctx: RunContext, member: Member) -> dict:
    """A run's result from its rows on disk, and (main process) its files."""
    rows = [json.loads(path.read_text()) for seed in ctx.cfg.seeds for path in _row_paths(ctx, member, seed).values()]
    result = {
        "config": {
            **config.to_dict(ctx.cfg),
            "resolved_model": models.resolve(ctx.cfg.model),
            "key": config.key(ctx.cfg),
        },
        "majority_accuracy": {ev.task.name: majority(ev.task, ev.test) for ev in ctx.evals},
        "n_test": {ev.task.name: len(ev.test) for ev in ctx.evals},
        "rows": [{k: v for k, v in r.items() if k != "train"} for r in rows],
    }
    if distributed.is_main():
        write_outputs(result, rows, ctx, member.out)
    distributed.barrier()
    return result


@dataclass
class PreparedSeed:
    """What every run of a cell shares for one seed: its split and evaluation sets, the baselines' rows, the adapter's
    fresh state and, when some run trains a method, the stage data."""

    split: Split
    evals: list[SeedEval]
    baselines: list[dict]
    start: dict
    data: StageData | None


def prepare_seed(ctx: RunContext, seed: int, todo: Sequence[Sequence[str]]) -> PreparedSeed:
    """One seed's split, fresh adapter, baselines (ICL and zero-shot rows) and, when some run still trains a method,
    the teacher's targets as stage data."""
    split = draw_split(ctx.test, ctx.pool, ctx.cfg.data, seed, ctx.unlabelled)
    ctx.model = adapters.fresh(ctx.model, ctx.cfg.adapter, seed)
    start = adapter_state(ctx.model)
    evals = [seed_eval(ctx, ev, split, seed) for ev in ctx.evals]
    baselines = [r for se in evals for r in baseline_rows(ctx, seed, se)]
    trained = list(dict.fromkeys(m for methods in todo for m in methods if not METHODS[m].baseline))
    data = stage_data(ctx, split, seed, trained) if trained else None
    return PreparedSeed(split, evals, baselines, start, data)


def baseline_rows(ctx: RunContext, seed: int, se: SeedEval) -> list[dict]:
    """ICL (with demonstrations) and zero-shot rows of one evaluation set; zero-shot is scored once per run."""
    name = se.eval.task.name
    with ctx.model.disable_adapter():
        icl, se.icl = cached_evaluate(ctx, se, se.icl_prompts, f"icl s{seed}")
        draws = [result_row(ctx, "icl", seed, se, icl, se.icl, se.k)]
        for draw, prompts in enumerate(se.more_icl, start=1):
            measured, acts = cached_evaluate(ctx, se, prompts, f"icl s{seed} draw {draw}")
            draws.append(result_row(ctx, "icl", seed, se, measured, acts, se.k))
        if name not in ctx.zero_shot:
            ctx.zero_shot[name] = cached_evaluate(ctx, se, se.plain, "zero-shot")
    return [mean_row(draws), result_row(ctx, "zero-shot", seed, se, *ctx.zero_shot[name], 0)]


def method_rows(ctx: RunContext, method: str, seed: int, logs: list[dict], prep: PreparedSeed, out: Path) -> list[dict]:
    """A trained method's rows (the adapter in the model) on the dev set and every evaluation set without
    demonstrations, then its adapter and model card."""
    evals, data, split = prep.evals, prep.data, prep.split
    with evaluated(ctx):
        extra = {
            "dev_accuracy": dev_accuracy(ctx, data.dev_plain, f"{method} dev s{seed}"),
            "diverged": divergences(logs),
            "train": logs,
        }
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
        files = adapter_files(ctx, method, seed, rows, logs, split, data.teacher_key(method))
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
