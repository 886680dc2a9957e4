"""Measuring the current model on a seed's evaluation sets: metrics, activations at the last prompt token, and the
result row of one (method, seed, evaluation set)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .context import EvalSet, RunContext
from .evaluate import Scores, generation_metrics, layer_cosine, reliability, score, summarise
from .generation import generate_texts
from .paths import atomic_path, cache_root
from .prompts import Prompted, icl_demos
from .splits import Split


@dataclass
class SeedEval:
    """One evaluation set's prompts for one seed: test queries alone and with demonstrations, gold labels, and the
    ICL teacher's activations once measured."""

    eval: EvalSet
    plain: list[Prompted]
    gold: np.ndarray
    icl_prompts: list[Prompted]
    k: int
    icl: torch.Tensor | None = None
    more_icl: list[list[Prompted]] = field(default_factory=list)


def seed_eval(ctx: RunContext, ev: EvalSet, split: Split, seed: int) -> SeedEval:
    """Test prompts of one evaluation set for one seed; ICL demonstrations are the training task's (`icl_demos`)."""
    k, prompt = min(ctx.cfg.prompt.k_max, ctx.cfg.data.n_train), ctx.cfg.prompt
    source, examples = ctx.task.examples, ev.task.examples
    plain = [ev.encoder.encode(examples[i]) for i in ev.test]

    def icl(draw: int) -> list[Prompted]:
        demos = icl_demos(split, ctx.pool, prompt.icl_demos, k, len(ev.test), seed, draw)
        return [ev.encoder.encode(examples[i], [source[d] for d in ds], ctx.task) for i, ds in zip(ev.test, demos)]

    more = [icl(draw) for draw in range(1, prompt.icl_draws)]
    return SeedEval(ev, plain, np.array([p.label for p in plain]), icl(0), k, more_icl=more)


def mean_row(rows: Sequence[dict]) -> dict:
    """One row for several ICL draws: every metric the mean over the draws (the first draw's reliability data and
    generations kept), with the number of draws and each draw's accuracy."""
    if len(rows) == 1:
        return rows[0]
    means = {k: float(np.mean([r[k] for r in rows])) for k, v in rows[0].items() if isinstance(v, float)}
    return {**rows[0], **means, "icl_draws": len(rows), "accuracy_by_draw": [r["accuracy"] for r in rows]}


def scores(ctx: RunContext, prompts: Sequence[Prompted], label_ids: Sequence[Sequence[int]], desc: str) -> Scores:
    """Label scores (by the task's `label_score`) and last-prompt-token activations of the current model."""
    return score(
        ctx.model,
        [p.prompt for p in prompts],
        label_ids,
        ctx.pad_id,
        ctx.tap,
        ctx.cfg.runtime.batch_size,
        desc,
        ctx.task.label_score,
    )


def evaluate(ctx: RunContext, se: SeedEval, prompts: Sequence[Prompted], desc: str) -> tuple[dict, torch.Tensor]:
    """The current model's metrics on prompts of one evaluation set, and its activations at the last prompt token.

    Classification is scored from the answer distribution; a generative task generates, cuts at the stop rule
    and compares parsed answers (parse failures count as wrong).
    """
    task, encoder = se.eval.task, se.eval.encoder
    if task.generative:
        texts = generate_texts(
            ctx.model, ctx.tokenizer, [p.prompt for p in prompts], task, ctx.cfg.runtime.batch_size, desc
        )
        golds = [task.examples[i].answer for i in se.eval.test]
        acts = scores(ctx, prompts, [[ctx.pad_id]], f"{desc} acts").acts
        return {**generation_metrics(texts, golds, task.parser), "generations": texts, "reliability": None}, acts
    measured = scores(ctx, prompts, encoder.label_ids, desc)
    result = summarise(measured, se.gold, encoder.label_first())
    return {**result, "reliability": reliability(measured, se.gold)}, measured.acts


def cached_evaluate(ctx: RunContext, se: SeedEval, prompts: Sequence[Prompted], desc: str) -> tuple[dict, torch.Tensor]:
    """`evaluate` of the base model (the adapter disabled), kept on disk under the cache by everything that fixes its
    result, so that a resumed run does not score its baselines again."""
    key = hashlib.sha256(
        json.dumps(
            [ctx.fingerprint, [p.prompt for p in prompts], se.gold.tolist(), se.eval.encoder.label_ids, ctx.pad_id,
             ctx.cfg.runtime.batch_size, ctx.cfg.teacher.site, ctx.cfg.teacher.layers, se.eval.task.label_score,
             se.eval.task.generative, [se.eval.task.examples[i].answer for i in se.eval.test]],
            default=str,
        ).encode()
    ).hexdigest()  # fmt: skip
    folder = cache_root() / "evaluations" / key
    if (folder / "measured.json").exists():
        return json.loads((folder / "measured.json").read_text()), load_file(folder / "acts.safetensors")["acts"]
    measured, acts = evaluate(ctx, se, prompts, desc)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file({"acts": acts.contiguous()}, tmp / "acts.safetensors")
        (tmp / "measured.json").write_text(json.dumps(measured))
    return measured, acts


def dev_accuracy(ctx: RunContext, dev: Sequence[Prompted], desc: str) -> float | None:
    """Label accuracy on the dev examples without demonstrations (None for generative tasks, which would need
    generation: their hyperparameters are chosen on dev loss)."""
    if ctx.task.generative:
        return None
    measured = scores(ctx, dev, ctx.encoder.label_ids, desc)
    return float((measured.label_probs().argmax(axis=1) == np.array([p.label for p in dev])).mean())


def result_row(
    ctx: RunContext, method: str, seed: int, se: SeedEval, measured: dict, acts: torch.Tensor, demos: int
) -> dict:
    """One (method, seed, evaluation set) result: the metrics and the per-layer cosine to the ICL teacher's
    activations on the same test queries (None for ICL itself)."""
    cos = layer_cosine(acts, se.icl) if method != "icl" else None
    return {
        "task": ctx.task.name,
        "eval_task": se.eval.task.name,
        "model": ctx.cfg.model,
        "method": method,
        "n_train": ctx.cfg.data.n_train,
        "seed": seed,
        **measured,
        "asim": float(np.mean(cos)) if cos is not None else None,
        "asim_layers": cos,
        "eval_demos": demos,
    }
