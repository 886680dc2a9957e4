"""A seed's training data for each label source, from gold answers and the ICL teacher's targets, and the stages of
every method trained on it for one adapter or several packed together, a trained prefix (IA2 before IA2 → SFT)
reused rather than retrained."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import torch
from peft import set_peft_model_state_dict

from ia2.config import RunConfig, TrainConfig
from ia2.data.prompts import Encoder, Prompted, teacher_prompts, teacher_queries
from ia2.data.splits import Split
from ia2.errors import IA2Error
from ia2.model import distributed, memory
from ia2.registry import METHODS
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training import packing
from ia2.training.loop import Item, Lane, train_lanes
from ia2.training.methods import Stage, needs_distribution
from ia2.training.tracking import Reporter, Tracking

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ia2.data.tasks import Task
    from ia2.model.handle import ModelHandle

log = logging.getLogger(__name__)


class Setup(Protocol):
    """What training reads of a run's set-up (`ia2.run.context.RunSetup` is one): the settings, and the task with
    its encoder."""

    cfg: RunConfig
    task: Task
    encoder: Encoder


@dataclass(frozen=True)
class StageData:
    """Training and dev items per label source (`gold`, `icl`, `placebo`), the dev prompts without demonstrations,
    the cache keys of the teacher targets they were made from (per teacher label source), and how often the ICL
    teacher's answer to a training query is its gold label (None for generative tasks, and in low-data mode, whose
    queries have none)."""

    items: dict[str, tuple[list[Item], list[Item]]]
    dev_plain: list[Prompted]
    teacher_keys: dict[str, str] = field(default_factory=dict)
    teacher_agreement: float | None = None

    def teacher_key(self, method: str) -> str | None:
        """The key of the teacher targets a method trained on (None for a method fed gold answers only)."""
        sources = [s.labels for s in METHODS[method].stages if s.labels in self.teacher_keys]
        return self.teacher_keys[sources[0]] if sources else None


def stage_data(setup: Setup, handle: ModelHandle, split: Split, seed: int, methods: Sequence[str]) -> StageData:
    """Items for each label source: gold answers, the ICL teacher's answers with activations (stored, or with the
    online teacher the ICL prompts to compute them from per batch) and, when a loss needs them, its next-token
    distributions, and the placebo teacher's when a method trains on them."""
    n, unlabelled = setup.cfg.data.n_train, bool(setup.cfg.data.unlabelled)
    examples, queries = setup.task.examples, teacher_queries(split, unlabelled)
    sources = {stage.labels for method in methods for stage in METHODS[method].stages}
    teachers = {
        labels: _teacher_items(setup, handle, split, seed, methods, labels)
        for labels in ("icl", "placebo")
        if labels == "icl" or labels in sources
    }
    dev = [setup.encoder.encode(examples[i]) for i in split.dev]
    gold = [Item(p.prompt, p.answer) for p in [setup.encoder.encode(examples[i]) for i in split.train] + dev]
    m = len(queries) - len(split.dev)
    icl = teachers["icl"][0]
    agreement = None if unlabelled or setup.task.generative else _agreement(icl[:n], gold[:n])
    items = {"gold": (gold[:n], gold[n:])} | {k: (t[:m], t[m:]) for k, (t, _) in teachers.items()}
    gold_where = [examples[i].where for i in split.train]
    for labels in sorted(sources):
        _check_training(
            setup.cfg,
            handle.model,
            items[labels][0],
            gold_where if labels == "gold" else [examples[i].where for i in queries[:m]],
        )
    return StageData(items, dev, {k: key for k, (_, key) in teachers.items() if key}, agreement)


def _teacher_items(
    setup: Setup, handle: ModelHandle, split: Split, seed: int, methods: Sequence[str], labels: str
) -> tuple[list[Item], str | None]:
    """The items of one teacher (`icl`, or `placebo`: its demonstrations' answers shuffled) for every teacher query,
    training then dev, and the cache key of its targets."""
    cfg, unlabelled = setup.cfg, bool(setup.cfg.data.unlabelled)
    demo_labels = "shuffled" if labels == "placebo" else "gold"
    prompts, policy = teacher_prompts(setup.encoder, split, cfg.prompt, cfg.data.n_train, unlabelled, seed, demo_labels)
    examples, queries = setup.task.examples, teacher_queries(split, unlabelled)
    answer = max([setup.task.max_new_tokens, *map(len, setup.encoder.label_ids)])
    size = memory.fitting_rows(
        handle.model,
        [len(p) + answer for p in prompts],
        cfg.runtime.batch_size,
        answer,
        False,
        [examples[i].where for i in queries],
        f"the {'placebo' if labels == 'placebo' else 'ICL'} teacher's pass",
    )
    teacher = teacher_targets(setup, handle, prompts, policy, seed, methods, min(distributed.everyone(size)))
    plain = [setup.encoder.prompt_ids(examples[i]) for i in queries]
    ids, logp = teacher.top_ids or [None] * len(plain), teacher.top_logp or [None] * len(plain)
    online = cfg.teacher.teacher_mode == "online"
    items = [
        Item(p, tokens, acts, top_ids, top_logp, q if online else None)
        for p, q, tokens, acts, top_ids, top_logp in zip(plain, prompts, teacher.tokens, teacher.acts, ids, logp)
    ]
    return items, teacher.key


def _check_training(cfg: RunConfig, model: PreTrainedModel, train: Sequence[Item], where: Sequence[str]) -> None:
    """Refuse in one line a training batch of the longest rows that would not fit in memory (`memory`); a pack of
    `--pack` adapters puts that many batches in one pass."""
    lanes = cfg.runtime.pack or 1
    memory.fitting_rows(
        model,
        [len(i.prompt) + len(i.answer) for i in train] * lanes,
        cfg.train.train_batch_size * lanes,
        max(len(i.answer) for i in train),
        True,
        list(where) * lanes,
        "a training step",
    )


def _agreement(teacher: Sequence[Item], gold: Sequence[Item]) -> float:
    """The share of training queries whose teacher answer is the gold label (its first token when the teacher
    answers one token, the labels' first tokens being distinct)."""
    return sum(t.answer == g.answer[: len(t.answer)] for t, g in zip(teacher, gold)) / len(gold)


def teacher_targets(
    setup: Setup,
    handle: ModelHandle,
    prompts: Sequence[list[int]],
    policy: str,
    seed: int,
    methods: Sequence[str],
    batch_size: int | None = None,
) -> targets.Targets:
    """The ICL teacher's answers, activations (none for the online teacher) and, when some method's loss needs them,
    next-token distributions, from the cache or collected now with the adapter disabled, in batches of `batch_size`
    (default: the runtime's)."""
    teacher = setup.cfg.teacher
    distribution = needs_distribution(methods)
    fields = {
        "model": handle.fingerprint,
        "task": setup.task.name,
        "data": setup.task.data_hash(),
        "seed": seed,
        "demos": policy,
    }
    tap = handle.tap if teacher.teacher_mode == "cached" else None
    stop = setup.task.stop[0] if setup.task.stop and teacher.teacher_stop == "task" else ""
    settings = CollectSettings(
        setup.task.max_new_tokens,
        stop,
        batch_size or setup.cfg.runtime.batch_size,
        f"teacher s{seed}",
        teacher.soft_top_k if distribution else None,
        setup.encoder.label_ids if setup.encoder.whole_labels else None,
        setup.task.label_score,
    )
    with handle.model.disable_adapter():
        return targets.cached_collect(
            handle.model,
            tap,
            handle.tokenizer,
            list(prompts),
            fields,
            settings,
            dtype=teacher.target_dtype,
            store=teacher.target_store,
        )


@dataclass
class Trainee:
    """One adapter trained through methods' stages: its seed, training settings and stage data, and the state and
    logs of every stage prefix trained so far, from the empty one (its fresh state) on, so that a trained prefix
    (IA2 before IA2 → SFT) is reused rather than retrained."""

    seed: int
    cfg: TrainConfig
    data: StageData
    memo: dict[tuple[Stage, ...], tuple[dict[str, torch.Tensor], list[dict]]]

    @classmethod
    def fresh(cls, seed: int, cfg: TrainConfig, data: StageData, state: dict[str, torch.Tensor]) -> Trainee:
        """A trainee with nothing trained yet, starting from the adapter state `state`."""
        return cls(seed, cfg, data, {(): (state, [])})


def _check_progress(trainee: Trainee, stage_log: dict, depth: int) -> None:
    """A stage that diverged (a non-finite loss), or a method's first stage whose best dev state is still the fresh
    adapter (with restore_best it would hand over the base model as trained), is reported by `_diverged` and marked
    in its log. A later stage that beats no dev check keeps the previous stage's adapter, as early stopping means it
    to: one log line."""
    if stage_log["improved"] or stage_log["diverged"] or not trainee.cfg.restore_best:
        if stage_log["diverged"]:
            _diverged(trainee, stage_log)
        return
    best = f"{stage_log['best_dev_loss']:.4g} (best step 0 of {stage_log['steps']})"
    if depth:
        log.info(
            "stage %s of seed %d: no dev check beat the state it started from, %s: that state is kept",
            stage_log["stage"],
            trainee.seed,
            best,
        )
        return
    stage_log["diverged"] = f"no dev check beat the initial dev loss {best}"
    _diverged(trainee, stage_log)


def _diverged(trainee: Trainee, stage_log: dict) -> None:
    """A diverged stage in one line: the run's error (`on_divergence` fail), or a warning when it is recorded."""
    stage, why = stage_log["stage"], stage_log["diverged"]
    what = f"stage {stage} of seed {trainee.seed} (lr {trainee.cfg.lr:g}) diverged: {why}"
    if trainee.cfg.on_divergence == "fail":
        raise IA2Error(f"{what}; lower --lr, or pass --on-divergence record to record it and go on")
    log.warning("%s; recorded in its rows and model card (--on-divergence record)", what)


def _stage_cfg(trainee: Trainee, stage: Stage) -> TrainConfig:
    """The trainee's settings for a stage; a budget-matched stage (`steps_of`) runs exactly the steps its method took
    for this trainee, with early stopping off (its best dev state is still the one kept)."""
    if stage.steps_of is None:
        return replace(trainee.cfg, max_epochs=trainee.cfg.max_epochs * stage.epochs_times)
    steps = max(1, sum(log["steps"] for log in trainee.memo[METHODS[stage.steps_of].stages][1]))
    return replace(trainee.cfg, max_steps=steps, max_epochs=steps, patience=steps + 1)


class StageRunner:
    """Trains methods' stages for several adapters (a run's seeds, a sweep cell's seeds and learning rates), in packs
    of at most `pack` that share each training pass (`train_lanes`)."""

    def __init__(
        self,
        handle: ModelHandle,
        cfg: RunConfig,
        trainees: Sequence[Trainee],
        pack: int | None = 1,
        tracking: Tracking | None = None,
    ) -> None:
        self.handle, self.cfg, self.trainees, self.pack, self.tracking = handle, cfg, list(trainees), pack, tracking
        self._adapters: packing.Pack | None = None
        self._depth = 0

    def train(self, stages: tuple[Stage, ...], who: Sequence[Trainee] | None = None) -> list[list[dict]]:
        """Train `stages` for each of `who` (every trainee by default), each from its longest trained prefix; return
        every trainee's stage logs. The packs' adapters are added once and serve every stage and pack of the call
        (adding 15 costs seconds); they are removed before it returns, so that the model evaluated and saved after
        holds its own adapter only."""
        self._depth += 1
        try:
            return self._train(stages, who)
        finally:
            self._depth -= 1
            if not self._depth:
                self._close()

    def pack_size(self, stages: tuple[Stage, ...], who: Sequence[Trainee]) -> int:
        """How many of `who` train together: `pack`, else what memory suggests for the most demanding of `stages`
        (one on a CPU), so that a caller can evaluate each pack as soon as it is trained."""
        return min((self._size([t.data.items[stage.labels][0] for t in who]) for stage in stages), default=1)

    def _size(self, trains: Sequence[Sequence[Item]]) -> int:
        """The pack size for adapters training on `trains`: `pack`, else what every process's memory allows."""
        return self.pack or min(distributed.everyone(packing.suggested(self.handle.model, self.cfg, trains)))

    def _train(self, stages: tuple[Stage, ...], who: Sequence[Trainee] | None) -> list[list[dict]]:
        """`train`, within the adapters it keeps."""
        who = list(self.trainees if who is None else who)
        for matched in dict.fromkeys(stage.steps_of for stage in stages if stage.steps_of):
            self.train(METHODS[matched].stages, who)
        for depth, stage in enumerate(stages):
            path = stages[: depth + 1]
            todo = [t for t in who if path not in t.memo]
            trains = [t.data.items[stage.labels][0] for t in todo]
            size = self._size(trains)
            for start in range(0, len(todo), size):
                self._train_pack(todo[start : start + size], path)
        return [t.memo[stages][1] for t in who]

    def _train_pack(self, pack: Sequence[Trainee], path: tuple[Stage, ...]) -> None:
        """Train the last stage of `path` for trainees that all have the rest of it trained."""
        stage, depth = path[-1], len(path) - 1
        lanes = [
            Lane(
                *t.data.items[stage.labels],
                _stage_cfg(t, stage),
                t.seed * 1000 + depth,
                t.memo[path[:-1]][0],
                f"{stage.loss}:{stage.labels} s{t.seed}",
                self._reporter(t.seed, path),
            )
            for t in pack
        ]
        adapters = self._adapters_for(len(lanes)) if len(lanes) > 1 else None
        trained = train_lanes(self.handle.model, self.handle.tap, lanes, stage, self.handle.pad_id, adapters)
        for t, (log, state) in zip(pack, trained):
            if stage.labels == "icl":
                log["teacher_agreement"] = t.data.teacher_agreement
            _check_progress(t, log, depth)
            t.memo[path] = (state, t.memo[path[:-1]][1] + [log])

    def _adapters_for(self, size: int) -> packing.Pack:
        """The open pack's adapters when there are enough of them, else a pack of `size` in their place."""
        if self._adapters is None or len(self._adapters.names) < size:
            self._close()
            self._adapters = packing.Pack(self.handle.model, size).__enter__()
        return self._adapters

    def _close(self) -> None:
        """Remove the pack's adapters, if any."""
        if self._adapters is not None:
            adapters, self._adapters = self._adapters, None
            adapters.__exit__()

    def load(self, trainee: Trainee, stages: tuple[Stage, ...]) -> None:
        """Put a trainee's state after `stages` into the model's own adapter, to evaluate or save it."""
        set_peft_model_state_dict(self.handle.model, trainee.memo[stages][0])

    def _reporter(self, seed: int, path: tuple[Stage, ...]) -> Reporter | None:
        """Where a stage's metrics go: under `seed<S>/<the stages trained so far>` (e.g. `ia2:icl>ce:gold`)."""
        if self.tracking is None:
            return None
        return self.tracking.reporter(f"seed{seed}/" + ">".join(f"{s.loss}:{s.labels}" for s in path))
