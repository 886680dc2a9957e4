"""Base-model scores kept on disk. A baseline (ICL, zero-shot) scores the frozen base model, so its scores depend only
on the model, the prompts and how they are scored: a resumed or repeated run reads them back instead of scoring its
baselines again, the costliest evaluation of a run (ICL prompts carry every demonstration). Metrics are computed
from the scores each time, so a change in how they are computed never meets a stale number."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ia2.evaluation.scoring import Scores
from ia2.model import distributed
from ia2.model.taps import Tap
from ia2.paths import atomic_path, cache_root

# Raised when scoring changes what it returns for the same model and prompts, so older entries are never read.
VERSION = 1
ARRAYS = ("label_logp", "vocab_top_prob", "vocab_top_token", "vocab_label_prob", "vocab_top10_mass")


def scores_key(
    model: nn.Module,
    fingerprint: str,
    tap: Tap | None,
    prompts: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    settings: dict,
) -> str:
    """Hash of everything base-model scores depend on: the weights (`fingerprint`), the dtype and device type they
    run in, the tap's site, module and layers, the exact prompt and label token ids, and the scoring `settings` (pad
    id, batch size, label scoring, and the runtime settings that change rounding: compilation, sharding)."""
    first = next(model.parameters())
    fields = {
        "version": VERSION,
        "model": fingerprint,
        "dtype": str(first.dtype),
        "device": first.device.type,
        "tap": None if tap is None else [tap.site, tap.module, list(tap.layers)],
        "labels": [list(ids) for ids in label_ids],
        **settings,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    digest.update(json.dumps([list(p) for p in prompts]).encode())
    return digest.hexdigest()[:24]


def cached_scores(key: str, compute: Callable[[], Scores], keep_acts: bool = True) -> Scores:
    """The scores stored under `key` in the cache's `scores/` folder, else `compute()`'s, stored there by the main
    process (activations only with `keep_acts`: a baseline whose activations nothing compares with leaves them out,
    and gets none back). Every process reads or computes alike, so collective scoring never runs on some only."""
    path = cache_root() / "scores" / f"{key}.safetensors"
    found = _read(path, keep_acts)
    if distributed.agree(found is not None):
        return found
    scores = compute()
    if not keep_acts:
        scores.acts = None
    if distributed.is_main():
        _save(path, scores)
    return scores


def _read(path: Path, keep_acts: bool) -> Scores | None:
    """The entry's scores (activations only with `keep_acts`), or None when it is not there, lacks activations asked
    for, or does not read or match its checksum (truncated, corrupt or overwritten in place: it is scored again and
    replaced)."""
    if not path.exists():
        return None
    try:
        with safe_open(path, "pt") as stored:
            tensors, recorded = {name: stored.get_tensor(name) for name in stored.keys()}, stored.metadata() or {}
    except (SafetensorError, OSError):
        return None
    if recorded.get("sha256") != _digest(tensors) or not set(ARRAYS) <= tensors.keys():
        return None
    if keep_acts and "acts" not in tensors:
        return None
    arrays = {name: tensors[name].numpy() for name in ARRAYS}
    return Scores(**arrays, acts=tensors.get("acts") if keep_acts else None)


def _save(path: Path, scores: Scores) -> None:
    tensors = {name: torch.from_numpy(getattr(scores, name)).contiguous() for name in ARRAYS}
    if scores.acts is not None:
        tensors["acts"] = scores.acts.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"sha256": _digest(tensors)})


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
