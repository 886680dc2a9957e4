"""Calibration and accuracy metrics over predicted label distributions; every example counts."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

N_BINS = 15


def sample_std(values: ArrayLike, axis: int = 0) -> np.ndarray:
    """Standard deviation over seeds with Bessel's correction (ddof 1), the spread every table and plot reports;
    zero for a single value, which has no spread to estimate."""
    arr = np.asarray(values, dtype=np.float64)
    return arr.std(axis=axis, ddof=1) if arr.shape[axis] > 1 else np.zeros_like(arr.mean(axis=axis))


def _bins(confidence: np.ndarray, n_bins: int, scheme: str) -> list[np.ndarray]:
    """Index sets of each bin: equal-width over [0, 1], equal-mass over examples sorted by confidence, or the
    reference code's equal-count bins (n // n_bins each, the last one taking the remainder; one bin if n < n_bins)."""
    if scheme == "reference":
        order, size = np.argsort(confidence, kind="stable"), len(confidence) // n_bins
        if size == 0:
            return [order]
        return [order[i * size : (i + 1) * size] for i in range(n_bins - 1)] + [order[(n_bins - 1) * size :]]
    if scheme == "mass":
        return [b for b in np.array_split(np.argsort(confidence, kind="stable"), n_bins) if len(b)]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    return [np.flatnonzero(which == b) for b in range(n_bins) if np.any(which == b)]


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS, scheme: str = "width") -> list[dict]:
    """Per non-empty bin: count, mean confidence, accuracy."""
    return [
        {"count": int(len(idx)), "confidence": float(confidence[idx].mean()), "accuracy": float(correct[idx].mean())}
        for idx in _bins(confidence, n_bins, scheme)
    ]


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS, scheme: str = "width") -> float:
    """Expected calibration error: Σ_bins |bin| / n · |accuracy − confidence|."""
    n = len(confidence)
    return float(
        sum(
            b["count"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability(confidence, correct, n_bins, scheme)
        )
    )


def brier(probs: np.ndarray, gold: np.ndarray) -> float:
    """Multi-class Brier score: mean over examples of Σ_c (p_c − 1[c = gold])²."""
    onehot = np.eye(probs.shape[1])[gold]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean −log p(gold)."""
    return float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-45, None)).mean())


def label_metrics(probs: np.ndarray, gold: np.ndarray) -> dict:
    """Accuracy, ECE (15 equal-width and 15 equal-mass bins), Brier and NLL of label-renormalised probabilities."""
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == gold).astype(float)
    return {
        "accuracy": float(correct.mean()),
        "ece": ece(confidence, correct, scheme="width"),
        "ece_equal_mass": ece(confidence, correct, scheme="mass"),
        "brier": brier(probs, gold),
        "nll": nll(probs, gold),
    }


def vocab_metrics(top_prob: np.ndarray, top_correct: np.ndarray, gold_prob: np.ndarray) -> dict:
    """Full-vocabulary first-token metrics: the argmax token over the whole vocabulary must be the gold label's first
    token."""
    return {
        "accuracy_vocab": float(top_correct.mean()),
        "ece_vocab": ece(top_prob, top_correct.astype(float), scheme="width"),
        "ece_equal_mass_vocab": ece(top_prob, top_correct.astype(float), scheme="mass"),
        "nll_vocab": float(-np.log(np.clip(gold_prob, 1e-45, None)).mean()),
    }


def reference_metrics(
    top1_of_top10: np.ndarray, top_correct: np.ndarray, label_first_probs: np.ndarray, gold: np.ndarray
) -> dict:
    """The reference code's calibration numbers, for parity only (its calibration script): 15 equal-mass bins, with
    confidence = the top-1 probability renormalised over the top 10 tokens, and the label-set confidence taken from a
    softmax applied to the label probabilities themselves (a defect that confines it to [1/K, e/(e+K−1)])."""
    squashed = np.exp(label_first_probs) / np.exp(label_first_probs).sum(axis=1, keepdims=True)
    label_correct = (label_first_probs.argmax(axis=1) == gold).astype(float)
    return {
        "ece_top1_reference": ece(top1_of_top10, top_correct.astype(float), scheme="reference"),
        "ece_label_reference": ece(squashed.max(axis=1), label_correct, scheme="reference"),
    }
