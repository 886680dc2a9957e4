"""Scoring label words on held-out prompts: label log-probabilities, full-vocabulary first-token probabilities, activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import metrics
from .batching import forward, length_sorted_chunks, make_batch
from .taps import Tap


@dataclass
class Scores:
    """Per example: log p(label) summed over its tokens [n, C]; the full-vocabulary first-token distribution's
    top probability, top token and label-first-token probabilities; and activations at the last prompt token [n, L, H]."""

    label_logp: np.ndarray
    vocab_top_prob: np.ndarray
    vocab_top_token: np.ndarray
    vocab_label_prob: np.ndarray
    acts: torch.Tensor | None

    def label_probs(self) -> np.ndarray:
        """p / Σ p over labels."""
        z = self.label_logp - self.label_logp.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


@torch.no_grad()
def score(model: nn.Module, prompts: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]], pad_id: int,
          tap: Tap | None = None, batch_size: int = 8, desc: str = "eval") -> Scores:
    """Score every label after every prompt; multi-token labels cost one extra forward per label and batch."""
    n, first = len(prompts), torch.tensor([ids[0] for ids in label_ids])
    label_logp = np.zeros((n, len(label_ids)))
    top_prob, top_token, label_prob = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros((n, len(label_ids)))
    acts: list[torch.Tensor | None] = [None] * n
    for chunk in tqdm(length_sorted_chunks([len(p) for p in prompts], batch_size), desc=desc, leave=False):
        chunk_prompts = [prompts[i] for i in chunk]
        batch = make_batch(chunk_prompts, [[0]] * len(chunk), pad_id, model.device.type)
        logits, chunk_acts = forward(model, batch, tap)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
        best = logp.max(dim=-1)
        top_prob[chunk], top_token[chunk] = best.values.exp().numpy(), best.indices.numpy()
        label_prob[chunk] = logp[:, first].exp().numpy()
        label_logp[chunk] = logp[:, first].numpy()
        for c, ids in enumerate(label_ids):
            if len(ids) > 1:
                label_logp[chunk, c] = _sequence_logp(model, chunk_prompts, ids, pad_id)
        if chunk_acts is not None:
            for row, i in enumerate(chunk):
                acts[i] = chunk_acts[row, :, -1].float().cpu()
    stacked = torch.stack(acts) if tap is not None else None
    return Scores(label_logp, top_prob, top_token, label_prob, stacked)


def _sequence_logp(model: nn.Module, prompts: Sequence[Sequence[int]], ids: Sequence[int], pad_id: int) -> np.ndarray:
    """Σ_t log p(ids_t | prompt, ids_<t) for each prompt."""
    batch = make_batch(prompts, [ids] * len(prompts), pad_id, model.device.type)
    logits, _ = forward(model, batch)
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(ids, device=logits.device).expand(len(prompts), -1)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).cpu().numpy()


def summarise(scores: Scores, gold: np.ndarray, label_first: Sequence[int]) -> dict:
    """Label-renormalised and full-vocabulary metrics for one evaluation."""
    first = np.asarray(label_first)
    top_correct = scores.vocab_top_token == first[gold]
    gold_prob = scores.vocab_label_prob[np.arange(len(gold)), gold]
    return {**metrics.label_metrics(scores.label_probs(), gold), **metrics.vocab_metrics(scores.vocab_top_prob, top_correct, gold_prob)}


def layer_cosine(student: torch.Tensor, teacher: torch.Tensor) -> list[float]:
    """Per-layer cosine similarity of activations [n, L, H], averaged over examples."""
    return torch.nn.functional.cosine_similarity(student, teacher, dim=-1).mean(dim=0).tolist()
