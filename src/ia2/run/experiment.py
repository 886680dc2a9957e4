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

import torch
from tqdm.auto import tqdm

from ia2 import config
from ia2.config import RunConfig
from ia2.data.splits import Split, draw_split, majority
from ia2.errors import IA2Error
from ia2.model import adapters, distributed, loading
from ia2.model.handle import ModelHandle
from ia2.paths import check_output, write_json
from ia2.registry import METHODS
from ia2.run import lock, outdir
from ia2.run.card import adapter_files, divergences
from ia2.run.context import RunSetup, set_up, tracked
from ia2.run.manifest import manifest
from ia2.run.measure import SeedEval, dev_accuracy, evaluate, mean_row, result_row, seed_eval
from ia2.run.outputs import write_reports
from ia2.training.loop import adapter_state
from ia2.training.stages import StageData, StageRunner, Trainee, stage_data
from ia2.training.tracking import Tracking, check_available

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
        setup, handle = set_up(first)
        out = members[0].out
        with tracked(first, out / "trackers", out.name or "ia2") as tracking:
            return _run(setup, handle, tracking, members)


def _row_paths(setup: RunSetup, member: Member, seed: int) -> dict[tuple[str, str], Path]:
    """Where each (method, evaluation set) row of one seed of a run goes."""
    folder = outdir.rows_dir(member.out, member.cfg)
    names = [ev.task.name for ev in setup.evals]
    return {(m, e): folder / outdir.row_file(seed, m, e, setup.task.name) for m in member.cfg.methods for e in names}


def _run(setup: RunSetup, handle: ModelHandle, tracking: Tracking | None, members: Sequence[Member]) -> list[dict]:
    """`run_cell` once set up, in three phases: per seed the split, the baselines and the teacher's targets; then each
    trained method for every (run, seed) that lacks it, packed; then each run's files."""
    todo = _todo(setup, members)
    handle, prepared = _prepare(setup, handle, members, todo)
    _train_methods(setup, handle, tracking, members, todo, prepared)
    return [_finish(replace(setup, cfg=member.cfg), handle, member) for member in members]


def _todo(setup: RunSetup, members: Sequence[Member]) -> dict[tuple[int, int], list[str]]:
    """Per (run index, seed), the methods whose rows are missing, as the main process sees them; logs the reused."""
    todo = {}
    for m, member in enumerate(members):
        for seed in setup.cfg.seeds:
            paths = _row_paths(setup, member, seed).items()
            missing = [method for (method, _), path in paths if outdir.read_intact(path) is None]
            todo[m, seed] = distributed.from_main(list(dict.fromkeys(missing)))
            reused = [method for method in setup.cfg.methods if method not in todo[m, seed]]
            if reused:
                log.info("%sseed %d: reusing the finished rows of %s", _who(members, m), seed, ", ".join(reused))
    return todo


def _prepare(
    setup: RunSetup, handle: ModelHandle, members: Sequence[Member], todo: dict[tuple[int, int], list[str]]
) -> tuple[ModelHandle, dict[int, PreparedSeed]]:
    """Every seed with work left, prepared (`prepare_seed`), its baseline rows written to the runs that lack them as
    soon as the seed is prepared (an interrupted run keeps them); the handle holding the model with the last seed's
    adapter, which training loads each trainee's state into."""
    runs = range(len(members))
    seeds = [seed for seed in setup.cfg.seeds if any(todo[m, seed] for m in runs)]
    prepared, zero_shot = {}, {}
    with tqdm(seeds, desc="seeds", leave=False) as bar:  # closed on an error too, so its line is not left open
        for seed in bar:
            handle, prepared[seed] = prepare_seed(setup, handle, seed, [todo[m, seed] for m in runs], zero_shot)
            for m in runs:
                _write(setup, members[m], seed, [r for r in prepared[seed].baselines if r["method"] in todo[m, seed]])
    return handle, prepared


def _train_methods(
    setup: RunSetup,
    handle: ModelHandle,
    tracking: Tracking | None,
    members: Sequence[Member],
    todo: dict[tuple[int, int], list[str]],
    prepared: dict[int, PreparedSeed],
) -> None:
    """Each trained method, in the config's order, for every (run, seed) lacking it, in packs (`runtime.pack`, else
    as memory allows: one adapter on a CPU); each pack's adapters evaluated and their rows written as soon as it is
    trained, so an interruption loses one pack's work, not a method's."""
    trainees = {
        (m, seed): Trainee.fresh(seed, member.cfg.train, prep.data, prep.start)
        for m, member in enumerate(members)
        for seed, prep in prepared.items()
        if prep.data is not None
    }
    runner = StageRunner(handle, setup.cfg, list(trainees.values()), setup.cfg.runtime.pack, tracking)
    for method in [name for name in setup.cfg.methods if not METHODS[name].baseline]:
        stages = METHODS[method].stages
        who = [key for key in trainees if method in todo[key]]
        size = runner.pack_size(stages, [trainees[key] for key in who])
        for pack in (who[start : start + size] for start in range(0, len(who), size)):
            runner.train(stages, [trainees[key] for key in pack])
            for m, seed in pack:
                runner.load(trainees[m, seed], stages)
                logs = trainees[m, seed].memo[stages][1]
                run_setup, out = replace(setup, cfg=members[m].cfg), members[m].out
                rows = method_rows(run_setup, handle, tracking, method, seed, logs, prepared[seed], out)
                _write(setup, members[m], seed, rows)


def _who(members: Sequence[Member], m: int) -> str:
    """A log line's prefix naming the run, when a cell has several."""
    return f"lr {members[m].cfg.train.lr:g}: " if len(members) > 1 else ""


def _write(setup: RunSetup, member: Member, seed: int, rows: Sequence[dict]) -> None:
    """Write rows of one seed of a run, each atomically, as soon as they are measured (the main process)."""
    paths = _row_paths(setup, member, seed)
    if distributed.is_main():
        for row in rows:
            write_json(paths[row["method"], row["eval_task"]], row)
    distributed.barrier()


def _finish(setup: RunSetup, handle: ModelHandle, member: Member) -> dict:
    """A run's result from its rows on disk, and (main process) its files."""
    cfg = setup.cfg
    rows = [json.loads(path.read_text()) for seed in cfg.seeds for path in _row_paths(setup, member, seed).values()]
    result = {
        "config": {**config.to_dict(cfg), "resolved_model": loading.resolve(cfg.model), "key": config.key(cfg)},
        "majority_accuracy": {ev.task.name: majority(ev.task, ev.test) for ev in setup.evals},
        "n_test": {ev.task.name: len(ev.test) for ev in setup.evals},
        "rows": [{k: v for k, v in r.items() if k != "train"} for r in rows],
    }
    if distributed.is_main():
        write_outputs(result, rows, setup, handle, member.out)
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


def prepare_seed(
    setup: RunSetup,
    handle: ModelHandle,
    seed: int,
    todo: Sequence[Sequence[str]],
    zero_shot: dict[str, tuple[dict, torch.Tensor]],
) -> tuple[ModelHandle, PreparedSeed]:
    """One seed's split, the handle with its fresh adapter, baselines (ICL and zero-shot rows; zero-shot is scored
    once per run and kept in `zero_shot`) and, when some run still trains a method, the teacher's targets as stage
    data."""
    split = draw_split(setup.test, setup.pool, setup.cfg.data, seed, setup.unlabelled)
    handle = handle.with_model(adapters.fresh(handle.model, setup.cfg.adapter, seed))
    start = adapter_state(handle.model)
    evals = [seed_eval(setup, ev, split, seed) for ev in setup.evals]
    baselines = [r for se in evals for r in baseline_rows(setup, handle, seed, se, zero_shot)]
    trained = list(dict.fromkeys(m for methods in todo for m in methods if not METHODS[m].baseline))
    data = stage_data(setup, handle, split, seed, trained) if trained else None
    return handle, PreparedSeed(split, evals, baselines, start, data)


def baseline_rows(
    setup: RunSetup, handle: ModelHandle, seed: int, se: SeedEval, zero_shot: dict[str, tuple[dict, torch.Tensor]]
) -> list[dict]:
    """ICL (with demonstrations) and zero-shot rows of one evaluation set; zero-shot is scored once per run, its
    scores kept in `zero_shot` by evaluation set. The base model's scores are cached, so a resumed run reads them
    back; only the first ICL draw's activations (the teacher's, for asim) and zero-shot's are kept."""
    name, runtime = se.eval.task.name, setup.cfg.runtime
    batch, cached = runtime.batch_size, {"compile": runtime.compile, "fsdp": runtime.fsdp}
    with handle.model.disable_adapter():
        icl, se.icl = evaluate(handle, se, se.icl_prompts, batch, f"icl s{seed}", cached)
        draws = [result_row(setup, "icl", seed, se, icl, se.icl, se.k)]
        for draw, prompts in enumerate(se.more_icl, start=1):
            measured, acts = evaluate(handle, se, prompts, batch, f"icl s{seed} draw {draw}", cached, keep_acts=False)
            draws.append(result_row(setup, "icl", seed, se, measured, acts, se.k))
        if name not in zero_shot:
            zero_shot[name] = evaluate(handle, se, se.plain, batch, "zero-shot", cached)
    return [mean_row(draws), result_row(setup, "zero-shot", seed, se, *zero_shot[name], 0)]


def method_rows(
    setup: RunSetup,
    handle: ModelHandle,
    tracking: Tracking | None,
    method: str,
    seed: int,
    logs: list[dict],
    prep: PreparedSeed,
    out: Path,
) -> list[dict]:
    """A trained method's rows (the adapter in the handle's model) on the dev set and every evaluation set without
    demonstrations, then its adapter and model card."""
    data, batch = prep.data, setup.cfg.runtime.batch_size
    with evaluated(handle, setup.cfg.runtime.merge_bf16) as scored:
        extra = {
            "dev_accuracy": dev_accuracy(scored, setup.encoder, data.dev_plain, batch, f"{method} dev s{seed}"),
            "diverged": divergences(logs),
            "train": logs,
        }
        rows = []
        for se in prep.evals:
            measured, acts = evaluate(scored, se, se.plain, batch, f"{method} s{seed}")
            rows.append({**result_row(setup, method, seed, se, measured, acts, 0), **extra})
            log.info("seed %d %-9s %s accuracy %.3f", seed, method, se.eval.task.name, rows[-1]["accuracy"])
    if tracking is not None:
        for row in rows:
            final = {k: row[k] for k in FINAL if isinstance(row.get(k), float)}
            tracking.reporter(f"seed{seed}/{method}/{row['eval_task']}")(final, 0)
    if setup.cfg.runtime.save_adapters and distributed.is_main():
        files = adapter_files(setup, handle.fingerprint, method, seed, rows, logs, prep.split, data.teacher_key(method))
        adapters.save(handle.model, out / "adapters" / f"seed{seed}" / method, setup.cfg.model, files)
    return rows


@contextmanager
def evaluated(handle: ModelHandle, merge_bf16: bool) -> Iterator[ModelHandle]:
    """The handle to evaluate the trained adapter in: as it is or, with merge_bf16 (reference parity), a copy
    merged into bf16 weights, dropped on the way out."""
    yield handle.with_model(adapters.merged_bf16(handle.model)) if merge_bf16 else handle


def write_outputs(result: dict, rows: list[dict], setup: RunSetup, handle: ModelHandle, out: Path) -> None:
    """The run's manifest, training logs and reports."""
    write_json(out / "manifest.json", manifest(setup, handle))
    write_json(
        out / "train_logs.json",
        [
            {"seed": r["seed"], "method": r["method"], "stages": r["train"]}
            for r in rows
            if "train" in r and r["eval_task"] == setup.task.name
        ],
    )
    write_reports(result, out)
