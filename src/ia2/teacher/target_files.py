"""Teacher targets on disk as one safetensors file: written atomically with the cache key's fields and a checksum of
the tensors, read back whole and checked; or a shard store's targets opened lazily."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ia2.paths import atomic_path
from ia2.teacher.store import CorruptEntry, Stored, TargetStore

TENSOR_NAMES = ("tokens", "acts", "top_ids", "top_logp")


@dataclass
class Targets:
    """Per example: the teacher's greedy answer ŷ and activations [layers, |ŷ|, hidden] at the positions producing it.

    When the next-token distribution is kept, `top_logp` holds fp32 log-probs [|ŷ|, k] at the same positions and
    `top_ids` their token ids [|ŷ|, k]; `top_ids` is None when the whole vocabulary is kept (k = V). Targets read
    from a shard store hold lazy `Stored` references instead of tensors; answers-only targets have acts None.
    `key` names their cache entry (`cached_collect`), where they have one.
    """

    tokens: list[list[int]]
    acts: list[torch.Tensor | Stored | None]
    top_ids: list[torch.Tensor | Stored] | None = None
    top_logp: list[torch.Tensor | Stored] | None = None
    key: str | None = None


def content_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): a targets file records it, so that
    damage that leaves the file readable (bytes overwritten in place) is found when it is loaded."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(path: Path, targets: Targets, fields: dict) -> None:
    """Write targets as one safetensors file (atomically), with the key's fields and the tensors' checksum
    (`content_digest`) as metadata."""
    tensors = {}
    for i, (tok, act) in enumerate(zip(targets.tokens, targets.acts)):
        tensors[f"tokens.{i}"] = torch.tensor(tok, dtype=torch.long)
        if act is not None:
            tensors[f"acts.{i}"] = act.contiguous()
    for name in ("top_ids", "top_logp"):
        for i, tensor in enumerate(getattr(targets, name) or []):
            tensors[f"{name}.{i}"] = tensor.contiguous()
    metadata = {
        "fields": json.dumps(fields, sort_keys=True),
        "n": str(len(targets.tokens)),
        "sha256": content_digest(tensors),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _incomplete(data: dict[str, torch.Tensor], metadata: dict[str, str]) -> str | None:
    """Why a targets file's tensors are not the `n` complete examples its metadata promises, or None when they are:
    every example has answer tokens, and each other tensor is kept for every example or for none."""
    n = metadata.get("n", "")
    if not n.isdigit():
        return f"metadata 'n' = {n!r}, not an example count"
    for name in TENSOR_NAMES:
        have = sum(f"{name}.{i}" in data for i in range(int(n)))
        if have != int(n) and (have or name == "tokens"):
            return f"{have} of {n} examples have {name!r} tensors"
    return None


def _mismatch(data: dict[str, torch.Tensor], metadata: dict[str, str]) -> str | None:
    """Why a targets file's tensors are not the ones it was written with (its recorded checksum differs, or it has
    none: written before files carried one), or None when they are."""
    recorded = metadata.get("sha256")
    if recorded is None:
        return "no content checksum (written by an earlier ia2)"
    found = content_digest(data)
    if found != recorded:
        return f"content checksum {found[:12]} is not the recorded {recorded[:12]}"
    return None


def load(path: Path) -> Targets:
    """Read targets written by `save` (acts None where none were kept); `CorruptEntry` when the file is unreadable,
    incomplete, or its tensors do not match their recorded checksum."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            data, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise CorruptEntry(path, str(exc)) from None
    problem = _incomplete(data, metadata) or _mismatch(data, metadata)
    if problem:
        raise CorruptEntry(path, problem)
    n = int(metadata["n"])
    optional = {
        name: [data[f"{name}.{i}"] for i in range(n)] if f"{name}.0" in data else None
        for name in ("top_ids", "top_logp")
    }
    return Targets(
        [data[f"tokens.{i}"].tolist() for i in range(n)], [data.get(f"acts.{i}") for i in range(n)], **optional
    )


def open_store(folder: Path, max_open: int = 4) -> Targets:
    """Targets of a shard store: tokens in memory, every tensor a lazy `Stored` reference read when a batch needs it
    (at most `max_open` shards open at once)."""
    shards = TargetStore(folder, max_open)
    acts = shards.refs("acts") or [None] * len(shards.tokens)
    return Targets(shards.tokens, acts, shards.refs("top_ids"), shards.refs("top_logp"))
