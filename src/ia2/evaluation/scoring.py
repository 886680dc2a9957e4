"""Scoring label words on held-out prompts: label log-probabilities, full-vocabulary first-token probabilities,
activations."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ia2.data import parsers
from ia2.evaluation import metrics
from ia2.model import distributed, padding
from ia2.model.forward_pass import forward, length_sorted_chunks, make_batch
from ia2.model.taps import Tap


@dataclass
class Scores:
    """Per example: log p(label) summed over its tokens [n, C]; the full-vocabulary first-token distribution's
    top probability, top token and label-first-token probabilities; and activations at the last prompt token [n, L,
    H]."""

    label_logp: np.ndarray
    vocab_top_prob: np.ndarray
    vocab_top_token: np.ndarray
    vocab_label_prob: np.ndarray
    vocab_top10_mass: np.ndarray
    acts: torch.Tensor | None

    def label_probs(self) -> np.ndarray:
        """p / Σ p over labels."""
        z = self.label_logp - self.label_logp.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


# A shared prefix shorter than this is not worth a cached pass of its own.
MIN_SHARED_PREFIX = 16


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every prompt shares, leaving each prompt at least one token of its own."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    for i in range(limit):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(limit, 0)


@torch.no_grad()
def score(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    tap: Tap | None = None,
    batch_size: int = 8,
    desc: str = "eval",
    label_score: str = "sum",
) -> Scores:
    """Score every label after every prompt (`label_scores`); multi-token labels cost one extra forward per label and
    batch.

    Prompts that share a long token prefix (ICL prompts with the same demonstrations) run the prefix once and
    reuse its KV cache (not under prompt tuning); the results are those of full forward passes. With several processes
    each scores every world_size-th batch, exactly as one process would, and every process returns every example's
    scores.
    """
    shared = common_prefix(prompts) if len(prompts) > 1 else 0
    single = all(len(ids) == 1 for ids in label_ids)
    # prompt tuning inserts its virtual tokens before whatever it is fed, the cached tail included: no prefix cache
    cacheable = single and shared >= MIN_SHARED_PREFIX and not padding.prompt_tuning_active(model)
    cache = _prefix_cache(model, prompts[0][:shared]) if cacheable else None
    out = _Collector(len(prompts), len(label_ids))
    chunks = length_sorted_chunks([len(p) for p in prompts], batch_size)
    for scored in distributed.map_batches(
        model,
        chunks,
        lambda chunk: _score_chunk(model, chunk, prompts, label_ids, pad_id, tap, cache, shared, label_score),
        desc,
    ):
        out.add(scored)
    return out.scores(tap is not None)


@dataclass
class _Scored:
    """One batch's scores: its examples (indices into the prompts) and their rows of the `Scores` arrays."""

    chunk: list[int]
    label_logp: np.ndarray
    label_prob: np.ndarray
    top_prob: np.ndarray
    top_token: np.ndarray
    top10: np.ndarray
    acts: torch.Tensor | None


def _score_chunk(
    model: nn.Module,
    chunk: list[int],
    prompts: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    tap: Tap | None,
    cache,
    shared: int,
    label_score: str,
) -> _Scored:
    """Score one batch of examples (indices `chunk` into `prompts`), after the cached prefix if any."""
    chunk_prompts = [prompts[i] for i in chunk]
    if cache is not None:
        logp, chunk_acts = _tail_forward(model, cache, shared, [p[shared:] for p in chunk_prompts], pad_id, tap)
    else:
        batch = make_batch(chunk_prompts, [[0]] * len(chunk), pad_id, model.device.type)
        logits, acts = forward(model, batch, tap)
        logp, chunk_acts = (
            torch.log_softmax(logits[:, -1].float(), dim=-1).cpu(),
            acts[:, :, -1] if acts is not None else None,
        )
    return _scored(
        chunk, logp, chunk_acts, label_ids, label_scores(model, chunk_prompts, logp, label_ids, pad_id, label_score)
    )


def _scored(
    chunk: list[int],
    logp: torch.Tensor,
    acts: torch.Tensor | None,
    label_ids: Sequence[Sequence[int]],
    label_logp: np.ndarray,
) -> _Scored:
    """The scores of a batch from its next-token log-probabilities [B, V], activations [B, L, H] and label scores
    [B, C]; the full-vocabulary ones are of each label's first token."""
    first, best = torch.tensor([ids[0] for ids in label_ids]), logp.max(dim=-1)
    return _Scored(
        chunk,
        label_logp=label_logp,
        label_prob=logp[:, first].exp().numpy(),
        top_prob=best.values.exp().numpy(),
        top_token=best.indices.numpy(),
        top10=logp.topk(min(10, logp.shape[-1]), dim=-1).values.exp().sum(-1).numpy(),
        acts=None if acts is None else acts.float().cpu(),
    )


class _Collector:
    """Fills the per-example arrays of Scores batch by batch."""

    def __init__(self, n: int, labels: int) -> None:
        self.label_logp, self.label_prob = np.zeros((n, labels)), np.zeros((n, labels))
        self.top_prob, self.top_token, self.top10 = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
        self.acts: list[torch.Tensor | None] = [None] * n

    def add(self, scored: _Scored) -> None:
        """Record a batch's scores at its examples' rows."""
        for name in ("label_logp", "label_prob", "top_prob", "top_token", "top10"):
            getattr(self, name)[scored.chunk] = getattr(scored, name)
        if scored.acts is not None:
            for row, i in enumerate(scored.chunk):
                self.acts[i] = scored.acts[row]

    def scores(self, with_acts: bool) -> Scores:
        """The Scores of every example recorded (with their activations when a tap read them)."""
        acts = torch.stack(self.acts) if with_acts else None
        return Scores(self.label_logp, self.top_prob, self.top_token, self.label_prob, self.top10, acts)


def _prefix_cache(model: nn.Module, prefix: Sequence[int]):
    """The KV cache of one pass over the shared prefix."""
    ids = torch.tensor([list(prefix)], device=model.device)
    positions = torch.arange(len(prefix), device=model.device).unsqueeze(0)
    return model(
        input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=True, logits_to_keep=1
    ).cache


def _tail_forward(
    model: nn.Module, cache, shared: int, tails: Sequence[Sequence[int]], pad_id: int, tap: Tap | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token log-probabilities [B, V] and activations [B, L, H] at each tail's last token, after the cached prefix.

    Tails are padded on the right, so no padding sits between prefix and query (sliding-window attention counts cache
    slots) and the pads, after every real token, are invisible to it under the causal mask.
    """
    width, device = max(len(t) for t in tails), model.device
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tails), width), dtype=torch.long)
    for row, tail in enumerate(tails):
        ids[row, : len(tail)], mask[row, : len(tail)] = torch.tensor(list(tail)), 1
    last = torch.tensor([len(t) - 1 for t in tails])
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(len(tails))
    inputs = dict(
        input_ids=ids.to(device),
        attention_mask=torch.cat([torch.ones(len(tails), shared, dtype=torch.long), mask], 1).to(device),
        position_ids=(shared + torch.arange(width)).expand(len(tails), -1).to(device),
        cache=past,
        use_cache=True,
        logits_to_keep=last.unsqueeze(1).to(device),
    )
    if tap is None:
        return torch.log_softmax(model(**inputs).logits[:, 0].float(), dim=-1).cpu(), None
    tap.keep = width
    with tap:
        logits = model(**inputs).logits
    acts = tap.take()
    return torch.log_softmax(logits[:, 0].float(), dim=-1).cpu(), acts[
        torch.arange(len(tails)), :, last.to(acts.device)
    ]


def label_scores(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    next_logp: torch.Tensor,
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    label_score: str = "sum",
) -> np.ndarray:
    """Each label's score after each prompt [B, C]: a single-token label's log-probability from the prompts'
    next-token log-probabilities `next_logp` [B, V]; a longer label's summed over its tokens (one forward per
    label), or averaged over them with `label_score` "mean" (length normalisation)."""
    out = next_logp[:, torch.tensor([ids[0] for ids in label_ids])].numpy()
    for c, ids in enumerate(label_ids):
        if len(ids) > 1:
            total = _sequence_logp(model, prompts, ids, pad_id)
            out[:, c] = total / len(ids) if label_score == "mean" else total
    return out


def _sequence_logp(model: nn.Module, prompts: Sequence[Sequence[int]], ids: Sequence[int], pad_id: int) -> np.ndarray:
    """Σ_t log p(ids_t | prompt, ids_<t) for each prompt."""
    batch = make_batch(prompts, [ids] * len(prompts), pad_id, model.device.type)
    logits, _ = forward(model, batch)
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(ids, device=logits.device).expand(len(prompts), -1)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).cpu().numpy()


def reliability(scores: Scores, gold: np.ndarray) -> dict[str, list]:
    """Each example's confidence (its top label's renormalised probability) and whether that label is gold."""
    probs = scores.label_probs()
    return {"confidence": probs.max(axis=1).tolist(), "correct": (probs.argmax(axis=1) == gold).astype(int).tolist()}


def summarise(scores: Scores, gold: np.ndarray, label_first: Sequence[int] | None) -> dict:
    """Label-renormalised and full-vocabulary metrics for one evaluation; the full-vocabulary (first-token) ones only
    when `label_first` is given, i.e. when the labels' first tokens tell them apart."""
    if label_first is None:
        return metrics.label_metrics(scores.label_probs(), gold)
    first = np.asarray(label_first)
    top_correct = scores.vocab_top_token == first[gold]
    gold_prob = scores.vocab_label_prob[np.arange(len(gold)), gold]
    return {
        **metrics.label_metrics(scores.label_probs(), gold),
        **metrics.vocab_metrics(scores.vocab_top_prob, top_correct, gold_prob),
        **metrics.reference_metrics(
            scores.vocab_top_prob / scores.vocab_top10_mass, top_correct, scores.vocab_label_prob, gold
        ),
    }


def layer_cosine(student: torch.Tensor, teacher: torch.Tensor) -> list[float]:
    """Per-layer cosine similarity of activations [n, L, H], averaged over examples."""
    return torch.nn.functional.cosine_similarity(student, teacher, dim=-1).mean(dim=0).tolist()


def generation_metrics(texts: Sequence[str], golds: Sequence[str], parser: str) -> dict:
    """Accuracy over all examples (a parse failure counts as wrong) and the parse-failure rate."""
    failures = [parsers.extract(parser, t) is None for t in texts]
    correct = [parsers.is_correct(parser, t, g) for t, g in zip(texts, golds)]
    return {"accuracy": float(np.mean(correct)), "parse_failure_rate": float(np.mean(failures))}
