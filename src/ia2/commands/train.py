"""`ia2 train`: one adapter of one method (IA2 → SFT by default) trained on all of a task's labelled examples, with
nothing held out for testing: the examples are split into training and dev (dev about N/2, as a run has it), and the
output folder holds the adapter, its model card and its record (ia2.json), ready for `ia2 predict` and `ia2 export`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ia2.config import RunConfig, validate
from ia2.data.splits import draw_split
from ia2.errors import IA2Error
from ia2.model import adapters, distributed
from ia2.model.handle import ModelHandle
from ia2.paths import check_output
from ia2.registry import METHODS
from ia2.run import lock
from ia2.run.card import adapter_files
from ia2.run.context import RunSetup, declared, set_up, tracked
from ia2.run.measure import dev_accuracy
from ia2.training.loop import adapter_state
from ia2.training.stages import StageRunner, Trainee, stage_data
from ia2.training.tracking import Tracking, check_available

log = logging.getLogger(__name__)


def sizes(rows: int, where: str) -> tuple[int, int]:
    """(N, dev) for `rows` labelled examples: N = rows − ⌊rows/3⌋ and dev the rest, ⌊rows/3⌋ (about N/2, as a run
    draws them); at least 2 training examples (leave-one-out demonstrations) and 1 dev example are needed."""
    if rows < 3:
        raise IA2Error(f"{where}: {rows} labelled examples; training needs at least 3 (2 to train, 1 for dev)")
    n_train = rows - rows // 3
    return n_train, rows - n_train


def sized(cfg: RunConfig) -> RunConfig:
    """The config with N and dev set from the task's size (a one-line error where it is too small)."""
    _one(cfg.seeds, "seeds")
    (method,) = _one(cfg.methods, "methods")
    if METHODS[method].baseline:
        raise IA2Error(f"--methods {method} trains nothing: choose a trained method (ia2-sft, ia2, sft, ...)")
    if isinstance(cfg.data.unlabelled, int):
        raise IA2Error(
            "--unlabelled: ia2 train uses every labelled example, so unlabelled queries come from a file "
            "(--unlabelled queries.jsonl), not from the pool"
        )
    with distributed.main_first():
        task = declared(cfg.data.task, cfg)
    n_train, n_dev = sizes(len(task.examples), task.name)
    cfg = replace(cfg, data=replace(cfg.data, n_train=n_train, n_dev=n_dev))
    validate(cfg)
    return cfg


def _one(values: tuple, name: str) -> tuple:
    if len(values) != 1:
        raise IA2Error(f"--{name}: ia2 train trains one adapter, so give one, got {', '.join(map(str, values))}")
    return values


def train(cfg: RunConfig, out: Path) -> Path:
    """Train the config's one method on every labelled example and save the adapter to `out` (a new folder)."""
    distributed.check_launch(cfg)
    check_available(cfg)
    check_output(out, folder=True)
    if out.is_dir() and any(out.iterdir()):
        raise IA2Error(f"{out}: already exists and is not an empty folder; train into a new folder")
    with lock.holding([lock.beside(out)]):
        cfg = sized(cfg)
        setup, handle = set_up(cfg, held_out=False)
        with tracked(cfg, out.parent / "trackers", out.name) as tracking:
            return _train(setup, handle, tracking, out)


def _train(setup: RunSetup, handle: ModelHandle, tracking: Tracking | None, out: Path) -> Path:
    """`train` once set up: split, collect the teacher's targets, train the stages, save."""
    cfg = setup.cfg
    (method,), (seed,) = cfg.methods, cfg.seeds
    split = draw_split([], setup.pool, cfg.data, seed, setup.unlabelled)
    handle = handle.with_model(adapters.fresh(handle.model, cfg.adapter, seed))
    data = stage_data(setup, handle, split, seed, [method])
    trainee = Trainee.fresh(seed, cfg.train, data, adapter_state(handle.model))
    runner = StageRunner(handle, cfg, [trainee], tracking=tracking)
    (logs,) = runner.train(METHODS[method].stages)
    runner.load(trainee, METHODS[method].stages)
    accuracy = dev_accuracy(handle, setup.encoder, data.dev_plain, cfg.runtime.batch_size, f"{method} dev")
    dev = {"eval_task": f"{setup.task.name} (dev)", "split": "dev", "accuracy": accuracy}
    if tracking is not None and dev["accuracy"] is not None:
        tracking.reporter(f"seed{seed}/{method}")({"dev_accuracy": dev["accuracy"]}, 0)
    log.info(
        "%s: %d training and %d dev examples, dev accuracy %s",
        method,
        cfg.data.n_train,
        cfg.data.n_dev,
        dev["accuracy"],
    )
    files = adapter_files(setup, handle.fingerprint, method, seed, [dev], logs, split, data.teacher_key(method))
    if distributed.is_main():
        adapters.save(handle.model, out, cfg.model, files)
    distributed.barrier()
    return out
