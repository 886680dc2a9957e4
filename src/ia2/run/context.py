"""A run's set-up: its task as declared, pool, encoder and held-out sets (`RunSetup`), loaded with the model's
handle (`set_up`), and the trackers a run reports to (`tracked`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ia2.config import RunConfig
from ia2.data.prompts import Encoder
from ia2.data.splits import marked_test, test_and_pool
from ia2.data.tasks import Task, check_transfer, load_task
from ia2.data.tasks.jsonl import read_jsonl
from ia2.errors import IA2Error
from ia2.model import compiled, distributed, loading
from ia2.model.handle import ModelHandle
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.training.tracking import Tracking


@dataclass(frozen=True)
class EvalSet:
    """A held-out test set every method is scored on: the run's own task, or an out-of-distribution one."""

    task: Task
    encoder: Encoder
    test: list[int]


@dataclass(frozen=True)
class RunSetup:
    """What every seed of a run shares apart from the model, frozen: the settings, the task and its pool, its encoder
    and the evaluation sets; `unlabelled` indexes the queries read from an unlabelled-queries file (low-data mode),
    appended after the task's own examples. The model travels beside it, in a `ModelHandle`."""

    cfg: RunConfig
    task: Task
    test: list[int]
    pool: list[int]
    encoder: Encoder
    evals: list[EvalSet]
    unlabelled: list[int] = field(default_factory=list)


def declared(spec: str, cfg: RunConfig) -> Task:
    """A task as declared, made generative by `parser` (scored by that answer extractor), with its answer prefix and
    answer length overridden when given."""
    data = cfg.data
    task = load_task(spec, data.labels if spec == data.task else None)
    if data.parser is not None and not task.generative and data.max_new_tokens is None:
        raise IA2Error(f"parser {data.parser} makes {spec} generative: give max_new_tokens (--max-new-tokens) too")
    if data.parser is not None:
        task = replace(task, labels=(), parser=data.parser)
    if data.answer_prefix is not None:
        task = replace(task, answer_prefix=data.answer_prefix)
    if data.label_score != task.label_score:
        task = replace(task, label_score=data.label_score)
    return task if data.max_new_tokens is None else replace(task, max_new_tokens=data.max_new_tokens)


def set_up(cfg: RunConfig, held_out: bool = True) -> tuple[RunSetup, ModelHandle]:
    """Load the task (checked to be large enough), then the model on this process's device (sharded with fsdp).
    Without `held_out` (training only) every example is in the pool and there is nothing to evaluate on."""
    device = distributed.device(cfg.runtime.device)
    with distributed.main_first():
        task = declared(cfg.data.task, cfg)
        test, pool = test_and_pool(task, cfg.data) if held_out else ([], list(range(len(task.examples))))
        task, from_file = with_unlabelled(task, cfg.data.unlabelled)
        model, tokenizer = loading.load(
            cfg.model,
            getattr(torch, cfg.runtime.dtype),
            "cpu" if cfg.runtime.fsdp else device,
            cfg.runtime.quantization,
        )
        context = model.config.get_text_config().max_position_embeddings
        encoder = Encoder(task, tokenizer, context, cfg.prompt.chat)
        ood = [_ood_set(name, task, tokenizer, context, cfg) for name in cfg.data.eval_tasks] if held_out else []
        evals = [EvalSet(task, encoder, test), *ood] if held_out else []
    fingerprint, model_class = targets.model_fingerprint(model), type(model).__name__
    compiled.apply(model, cfg.runtime.compile)
    if cfg.runtime.activation_checkpointing:  # non-reentrant: the taps' outputs keep their gradients
        model.activation_checkpointing_enable({"use_reentrant": False})
    if cfg.runtime.fsdp:
        distributed.shard_model(model, device)
    tap = Tap(model, cfg.teacher.site, cfg.teacher.layers)
    setup = RunSetup(cfg, task, test, pool, encoder, evals, from_file)
    return setup, ModelHandle(model, tokenizer, tap, fingerprint, model_class)


def with_unlabelled(task: Task, unlabelled: int | str | None) -> tuple[Task, list[int]]:
    """The task with the questions of an unlabelled-queries file (low-data mode from a file) appended after its own
    examples, and their indices; as it is, and none, otherwise (M queries are then drawn from the pool)."""
    if not isinstance(unlabelled, str):
        return task, []
    queries = [replace(e, answer="") for e in read_jsonl(Path(unlabelled).expanduser(), answers=False)]
    start = len(task.examples)
    return replace(task, examples=task.examples + tuple(queries)), list(range(start, start + len(queries)))


def _ood_set(name: str, task: Task, tokenizer: PreTrainedTokenizerBase, context: int, cfg: RunConfig) -> EvalSet:
    """An out-of-distribution evaluation set whose labels must be the training task's (or a superset of them)."""
    ood = declared(name, cfg)
    check_transfer(task, ood)
    test, _ = marked_test(ood, cfg.data.n_test, cfg.data.data_seed)
    return EvalSet(ood, Encoder(ood, tokenizer, context, cfg.prompt.chat), test)


@contextmanager
def tracked(cfg: RunConfig, folder: Path, name: str) -> Iterator[Tracking | None]:
    """The trackers `report_to` names (None for none), on the main process only (it alone reports), while open;
    they are closed on the way out, whatever happens inside."""
    tracking = Tracking(cfg, folder, name) if cfg.runtime.report_to and distributed.is_main() else None
    try:
        yield tracking
    finally:
        if tracking is not None:
            tracking.finish()
