"""Measuring the current model on a seed's evaluation sets: metrics, activations at the last prompt token, and the
result row of one (method, seed, evaluation set)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ia2.data.prompts import Encoder, Prompted, icl_demos
from ia2.data.splits import Split
from ia2.evaluation import cache
from ia2.evaluation.scoring import Scores, generation_metrics, layer_cosine, reliability, score, summarise
from ia2.model.generation import generate_texts
from ia2.model.handle import ModelHandle
from ia2.run.context import EvalSet, RunSetup


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


def seed_eval(setup: RunSetup, ev: EvalSet, split: Split, seed: int) -> SeedEval:
    """Test prompts of one evaluation set for one seed; ICL demonstrations are the training task's (`icl_demos`)."""
    k, prompt = min(setup.cfg.prompt.k_max, setup.cfg.data.n_train), setup.cfg.prompt
    source, examples = setup.task.examples, ev.task.examples
    plain = [ev.encoder.encode(examples[i]) for i in ev.test]

    def icl(draw: int) -> list[Prompted]:
        demos = icl_demos(split, setup.pool, prompt.icl_demos, k, len(ev.test), seed, draw)
        return [ev.encoder.encode(examples[i], [source[d] for d in ds], setup.task) for i, ds in zip(ev.test, demos)]

    more = [icl(draw) for draw in range(1, prompt.icl_draws)]
    return SeedEval(ev, plain, np.array([p.label for p in plain]), icl(0), k, more_icl=more)


def mean_row(rows: Sequence[dict]) -> dict:
    """One row for several ICL draws: every metric the mean over the draws (the first draw's reliability data and
    generations kept), with the number of draws and each draw's accuracy."""
    if len(rows) == 1:
        return rows[0]
    means = {k: float(np.mean([r[k] for r in rows])) for k, v in rows[0].items() if isinstance(v, float)}
    return {**rows[0], **means, "icl_draws": len(rows), "accuracy_by_draw": [r["accuracy"] for r in rows]}


def scores(
    handle: ModelHandle,
    prompts: Sequence[Prompted],
    label_ids: Sequence[Sequence[int]],
    batch_size: int,
    label_score: str,
    desc: str,
) -> Scores:
    """Label scores (by `label_score`) and last-prompt-token activations of the handle's model."""
    model, pad, tap = handle.model, handle.pad_id, handle.tap
    return score(model, [p.prompt for p in prompts], label_ids, pad, tap, batch_size, desc, label_score)


def evaluate(
    handle: ModelHandle,
    se: SeedEval,
    prompts: Sequence[Prompted],
    batch_size: int,
    desc: str,
    cached: Mapping[str, object] | None = None,
    keep_acts: bool = True,
) -> tuple[dict, torch.Tensor | None]:
    """The model's metrics on prompts of one evaluation set, and its activations at the last prompt token.

    Classification is scored from the answer distribution; a generative task generates, cuts at the stop rule
    and compares parsed answers (parse failures count as wrong). With `cached` (the base model, its adapter
    disabled; the runtime settings that change rounding) a classification's scores are read from, or kept in, the
    cache (`evaluation.cache`), activations only with `keep_acts`.
    """
    task, encoder = se.eval.task, se.eval.encoder
    if task.generative:
        texts = generate_texts(handle.model, handle.tokenizer, [p.prompt for p in prompts], task, batch_size, desc)
        golds = [task.examples[i].answer for i in se.eval.test]
        acts = scores(handle, prompts, [[handle.pad_id]], batch_size, task.label_score, f"{desc} acts").acts
        return {**generation_metrics(texts, golds, task.parser), "generations": texts, "reliability": None}, acts

    def measure() -> Scores:
        return scores(handle, prompts, encoder.label_ids, batch_size, task.label_score, desc)

    if cached is not None:
        settings = {"pad_id": handle.pad_id, "batch_size": batch_size, "label_score": task.label_score, **cached}
        key = cache.scores_key(
            handle.model, handle.fingerprint, handle.tap, [p.prompt for p in prompts], encoder.label_ids, settings
        )
        measured = cache.cached_scores(key, measure, keep_acts)
    else:
        measured = measure()
    result = summarise(measured, se.gold, encoder.label_first())
    return {**result, "reliability": reliability(measured, se.gold)}, measured.acts


def dev_accuracy(
    handle: ModelHandle, encoder: Encoder, dev: Sequence[Prompted], batch_size: int, desc: str
) -> float | None:
    """Label accuracy on the dev examples without demonstrations (None for generative tasks, which would need
    generation: their hyperparameters are chosen on dev loss)."""
    task = encoder.task
    if task.generative:
        return None
    measured = scores(handle, dev, encoder.label_ids, batch_size, task.label_score, desc)
    return float((measured.label_probs().argmax(axis=1) == np.array([p.label for p in dev])).mean())


def result_row(
    setup: RunSetup, method: str, seed: int, se: SeedEval, measured: dict, acts: torch.Tensor, demos: int
) -> dict:
    """One (method, seed, evaluation set) result: the metrics and the per-layer cosine to the ICL teacher's
    activations on the same test queries (None for ICL itself)."""
    cos = layer_cosine(acts, se.icl) if method != "icl" else None
    return {
        "task": setup.task.name,
        "eval_task": se.eval.task.name,
        "model": setup.cfg.model,
        "method": method,
        "n_train": setup.cfg.data.n_train,
        "seed": seed,
        **measured,
        "asim": float(np.mean(cos)) if cos is not None else None,
        "asim_layers": cos,
        "eval_demos": demos,
    }
