"""Sharded teacher targets on disk: written shard by shard as they are collected, read back one tensor at a time.

A store is a folder holding `shard-00000.safetensors`, … (each up to `shard_size` examples or about `shard_bytes`
bytes, whichever comes first; tensors named `<name>.<example>`) and `index.json` (example count, answer tokens,
which shard holds each example, each shard's SHA-256, the tensor names kept, and the writer's metadata such as the
cache fields and the activations' dtype). Training reads only the current batch's tensors, so host memory stays
bounded by a few batches whatever N and T are.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ia2.errors import IA2Error
from ia2.paths import atomic_path, file_sha256

INDEX = "index.json"
INDEX_FIELDS = frozenset({"n", "shards", "shard_of", "names", "tokens"})
SHARD_SIZE = 64
SHARD_BYTES = 512 << 20

# (example index, answer tokens, named tensors) as a collector yields them, in any order
Entry = tuple[int, list[int], dict[str, torch.Tensor]]


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


class CorruptEntry(IA2Error):
    """A cached targets entry (file or store folder) that cannot be read back as written: truncated, emptied or
    partly deleted. `path` is the whole entry, so a caller can remove it and recompute."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cached targets at {path} are corrupt ({reason})")
        self.path = path


class _Writer:
    """Buffers entries and writes a shard whenever `shard_size` examples or `shard_bytes` bytes are buffered."""

    def __init__(self, folder: Path, shard_size: int, shard_bytes: int) -> None:
        self.folder, self.shard_size, self.shard_bytes = folder, shard_size, shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.count, self.bytes, self.shards = 0, 0, 0
        self.shard_of: dict[int, int] = {}
        self.digests: list[str] = []

    def add(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            self.buffer[f"{name}.{index}"] = tensor.contiguous()
            self.bytes += tensor.numel() * tensor.element_size()
        self.shard_of[index] = self.shards
        self.count += 1
        if self.count >= self.shard_size or self.bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        save_file(self.buffer, str(self.folder / shard_name(self.shards)))
        self.digests.append(file_sha256(self.folder / shard_name(self.shards)))
        self.buffer, self.count, self.bytes, self.shards = {}, 0, 0, self.shards + 1


def write(
    folder: Path,
    entries: Iterable[Entry],
    n: int,
    metadata: dict[str, Any],
    shard_size: int = SHARD_SIZE,
    shard_bytes: int = SHARD_BYTES,
) -> None:
    """Write n entries as a store, shard by shard as they arrive (atomically: the folder appears only when complete)."""
    tokens: list[list[int] | None] = [None] * n
    names: set[str] = set()
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        writer = _Writer(tmp, shard_size, shard_bytes)
        for index, answer, tensors in entries:
            tokens[index] = list(answer)
            names |= set(tensors)
            writer.add(index, tensors)
        writer.flush()
        if any(t is None for t in tokens):
            raise ValueError(f"store {folder.name}: entries for {tokens.count(None)} of {n} examples are missing")
        index = {
            "n": n,
            "shards": [shard_name(s) for s in range(writer.shards)],
            "sha256": writer.digests,
            "shard_of": [writer.shard_of[i] for i in range(n)],
            "names": sorted(names),
            "tokens": tokens,
            **metadata,
        }
        (tmp / INDEX).write_text(json.dumps(index))


@dataclass(frozen=True, eq=False)
class Stored:
    """One example's tensor in a store, read only when a batch needs it."""

    store: TargetStore
    name: str
    index: int

    def load(self) -> torch.Tensor:
        return self.store.tensor(self.name, self.index)


class TargetStore:
    """A store opened for reading: answer tokens in memory, tensors read one at a time from their shard; at most
    `max_open` shards stay open, the least recently used closed first. `opens` and `peak_open` count shard openings
    and the most shards open at once, `reads` the tensors read."""

    def __init__(self, folder: Path, max_open: int = 4) -> None:
        index = read_index(folder)
        check_shards(folder, index)
        self.folder, self.index, self.max_open = folder, index, max_open
        self.tokens: list[list[int]] = index["tokens"]
        self._open: OrderedDict[int, Any] = OrderedDict()
        self.opens, self.peak_open, self.reads = 0, 0, 0

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / INDEX).is_file()

    def refs(self, name: str) -> list[Stored] | None:
        """Lazy references to tensor `name` of every example, or None when the store does not keep it."""
        if name not in self.index["names"]:
            return None
        return [Stored(self, name, i) for i in range(self.index["n"])]

    def tensor(self, name: str, index: int) -> torch.Tensor:
        """Tensor `name` of example `index`, read from its shard (a copy: nothing else of the shard is loaded)."""
        self.reads += 1
        return self._handle(self.index["shard_of"][index]).get_tensor(f"{name}.{index}")

    def _handle(self, shard: int) -> Any:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)
        self._open[shard] = safe_open(str(self.folder / self.index["shards"][shard]), framework="pt")
        self.opens += 1
        self.peak_open = max(self.peak_open, len(self._open))
        return self._open[shard]


def _index_problem(index: Any) -> str | None:
    """Why a parsed index.json cannot describe a store, or None when it can."""
    if not isinstance(index, dict) or not INDEX_FIELDS <= index.keys():
        return f"fields {sorted(INDEX_FIELDS)} expected"
    n, shards, shard_of, tokens = index["n"], index["shards"], index["shard_of"], index["tokens"]
    if not isinstance(n, int) or not all(isinstance(index[k], list) for k in INDEX_FIELDS - {"n"}):
        return "fields of the wrong type"
    if len(tokens) != n or len(shard_of) != n:
        return f"{len(tokens)} answers and {len(shard_of)} shard numbers for n={n} examples"
    if not all(isinstance(s, int) and 0 <= s < len(shards) for s in shard_of):
        return "an example is placed in a shard the index does not list"
    return None


def read_index(folder: Path) -> dict[str, Any]:
    """A store's index.json, checked to describe its examples; `CorruptEntry` when it is unreadable or inconsistent."""
    try:
        index = json.loads((folder / INDEX).read_bytes())
    except (OSError, ValueError) as exc:
        raise CorruptEntry(folder, f"{INDEX}: {exc}") from None
    problem = _index_problem(index)
    if problem:
        raise CorruptEntry(folder, f"{INDEX}: {problem}")
    return index


def check_shards(folder: Path, index: dict[str, Any]) -> None:
    """Check every shard's bytes against the checksum the index records and its header for its examples' tensors,
    so a missing, truncated or overwritten shard is found when the store is opened rather than mid-training (this
    reads the store once); `CorruptEntry` otherwise."""
    expected: list[set[str]] = [set() for _ in index["shards"]]
    for example, shard in enumerate(index["shard_of"]):
        expected[shard] |= {f"{name}.{example}" for name in index["names"]}
    digests = index.get("sha256")
    if not isinstance(digests, list) or len(digests) != len(index["shards"]):
        raise CorruptEntry(folder, f"{INDEX}: no checksum per shard (written by an earlier ia2)")
    for name, tensors, recorded in zip(index["shards"], expected, digests):
        if not (folder / name).is_file():
            raise CorruptEntry(folder, f"{name} missing")
        found = file_sha256(folder / name)
        if found != recorded:
            raise CorruptEntry(folder, f"{name}: checksum {found[:12]} is not the recorded {recorded[:12]}")
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                missing = tensors - set(handle.keys())
        except (OSError, SafetensorError) as exc:
            raise CorruptEntry(folder, f"{name}: {exc}") from None
        if missing:
            raise CorruptEntry(folder, f"{name}: {len(missing)} of its {len(tensors)} tensors missing")


def resolve(value: torch.Tensor | Stored | None) -> torch.Tensor | None:
    """A tensor as it is, or a stored one read now."""
    return value.load() if isinstance(value, Stored) else value
