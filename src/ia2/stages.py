"""A seed's training data for each label source, from gold answers and the ICL teacher's targets, and the stages of
every method trained on it, a trained prefix (IA2 before IA2 → SFT) reused rather than retrained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peft import set_peft_model_state_dict

from . import targets
from .context import RunContext
from .losses import LOSSES
from .methods import METHODS, Stage
from .prompts import Prompted, teacher_prompts, teacher_queries
from .splits import Split
from .tracking import Reporter
from .train import Item, adapter_state, train_stage


@dataclass(frozen=True)
class StageData:
    """Training and dev items per label source (`gold`, `icl`), the dev prompts without demonstrations, the cache
    key of the teacher's targets they were made from, and how often the teacher's answer to a training query is its
    gold label (None for generative tasks, and in low-data mode, whose queries have none)."""

    items: dict[str, tuple[list[Item], list[Item]]]
    dev_plain: list[Prompted]
    teacher_key: str | None = None
    teacher_agreement: float | None = None


def stage_data(ctx: RunContext, split: Split, seed: int, methods: Sequence[str]) -> StageData:
    """Items for each label source: gold answers, and the ICL teacher's answers with activations (stored, or with
    the online teacher the ICL prompts to compute them from per batch) and, when a loss needs them, its next-token
    distributions."""
    cfg, unlabelled = ctx.cfg, bool(ctx.cfg.data.unlabelled)
    prompts, policy = teacher_prompts(ctx.encoder, split, cfg.prompt, cfg.data.n_train, unlabelled, seed)
    teacher = teacher_targets(ctx, prompts, policy, seed, methods)
    examples = ctx.task.examples
    plain = [ctx.encoder.prompt_ids(examples[i]) for i in teacher_queries(split, unlabelled)]
    ids, logp = teacher.top_ids or [None] * len(plain), teacher.top_logp or [None] * len(plain)
    online = cfg.teacher.teacher_mode == "online"
    icl = [
        Item(p, tokens, acts, top_ids, top_logp, q if online else None)
        for p, q, tokens, acts, top_ids, top_logp in zip(plain, prompts, teacher.tokens, teacher.acts, ids, logp)
    ]
    dev = [ctx.encoder.encode(examples[i]) for i in split.dev]
    gold = [Item(p.prompt, p.answer) for p in [ctx.encoder.encode(examples[i]) for i in split.train] + dev]
    n, m = cfg.data.n_train, len(plain) - len(split.dev)
    agreement = None if unlabelled or ctx.task.generative else _agreement(icl[:n], gold[:n])
    return StageData({"gold": (gold[:n], gold[n:]), "icl": (icl[:m], icl[m:])}, dev, teacher.key, agreement)


def _agreement(teacher: Sequence[Item], gold: Sequence[Item]) -> float:
    """The share of training queries whose teacher answer is the gold label (its first token when the teacher
    answers one token, the labels' first tokens being distinct)."""
    return sum(t.answer == g.answer[: len(t.answer)] for t, g in zip(teacher, gold)) / len(gold)


def teacher_targets(
    ctx: RunContext, prompts: Sequence[list[int]], policy: str, seed: int, methods: Sequence[str]
) -> targets.Targets:
    """The ICL teacher's answers, activations (none for the online teacher) and, when some method's loss needs them,
    next-token distributions, from the cache or collected now with the adapter disabled."""
    teacher = ctx.cfg.teacher
    distribution = any(LOSSES[stage.loss].needs_distribution for m in methods for stage in METHODS[m].stages)
    fields = {
        "model": ctx.fingerprint,
        "task": ctx.task.name,
        "data": ctx.task.data_hash(),
        "seed": seed,
        "demos": policy,
    }
    tap = ctx.tap if teacher.teacher_mode == "cached" else None
    stop = ctx.task.stop[0] if ctx.task.stop and teacher.teacher_stop == "task" else ""
    with ctx.model.disable_adapter():
        return targets.cached_collect(
            ctx.model,
            tap,
            ctx.tokenizer,
            list(prompts),
            fields,
            ctx.task.max_new_tokens,
            stop,
            ctx.cfg.runtime.batch_size,
            f"teacher s{seed}",
            teacher.soft_top_k if distribution else None,
            teacher.target_dtype,
            teacher.target_store,
            choices=ctx.encoder.label_ids if ctx.encoder.whole_labels else None,
            label_score=ctx.task.label_score,
        )


class StageRunner:
    """Trains methods' stages on one seed's adapter, keeping each trained prefix's state and logs for reuse."""

    def __init__(self, ctx: RunContext, data: StageData, seed: int) -> None:
        self.ctx, self.data, self.seed = ctx, data, seed
        self.memo: dict[tuple[Stage, ...], tuple[dict, list[dict]]] = {(): (adapter_state(ctx.model), [])}

    def train(self, stages: tuple[Stage, ...]) -> list[dict]:
        """Train `stages`, starting from the longest already-trained prefix; return every stage's log."""
        done = max((p for p in self.memo if stages[: len(p)] == p), key=len)
        state, logs = self.memo[done]
        set_peft_model_state_dict(self.ctx.model, state)
        for depth in range(len(done), len(stages)):
            stage = stages[depth]
            train, dev = self.data.items[stage.labels]
            log = train_stage(
                self.ctx.model,
                self.ctx.tap,
                train,
                dev,
                stage,
                self.ctx.cfg.train,
                self.seed * 1000 + depth,
                self.ctx.pad_id,
                f"{stage.loss}:{stage.labels} s{self.seed}",
                self._reporter(stages[: depth + 1]),
            )
            if stage.labels == "icl":
                log["teacher_agreement"] = self.data.teacher_agreement
            logs = logs + [log]
            self.memo[stages[: depth + 1]] = (adapter_state(self.ctx.model), logs)
        return logs

    def _reporter(self, path: tuple[Stage, ...]) -> Reporter | None:
        """Where a stage's metrics go: under `seed<S>/<the stages trained so far>` (e.g. `ia2:icl>ce:gold`)."""
        if self.ctx.tracking is None:
            return None
        return self.ctx.tracking.reporter(f"seed{self.seed}/" + ">".join(f"{s.loss}:{s.labels}" for s in path))
