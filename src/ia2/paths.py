"""Where ia2 keeps its caches, and atomic writes so nothing half-written looks complete."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ia2.errors import IA2Error


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read a block at a time (a shard or a data archive can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """The cache folder: $IA2_CACHE, else ~/.cache/ia2."""
    return Path(os.environ.get("IA2_CACHE", Path.home() / ".cache" / "ia2"))


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` (file or folder); rename it onto `target` on success."""
    _replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            if not tmp.is_dir():
                raise IA2Error(f"{target}: a folder is in the way of the file to write there")
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _replaceable(target: Path) -> None:
    """Refuse to replace a symbolic link, device, FIFO or socket: renaming onto it would destroy what it is."""
    if target.is_symlink() or (target.exists() and not (target.is_file() or target.is_dir())):
        raise IA2Error(f"{target}: {_kind(target)}, not a file or folder ia2 may replace")


def _kind(path: Path) -> str:
    """What a path is, in words, for a refusal."""
    if path.is_symlink():
        return "a symbolic link"
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a socket" if stat.S_ISSOCK(mode) else "a file" if stat.S_ISREG(mode) else "a folder"


def check_output(target: Path, folder: bool = False, inputs: Sequence[Path] = ()) -> None:
    """Refuse, before any work, an output path whose writing would destroy something or fail at the end: a symbolic
    link, device, FIFO or socket, a file where a folder goes (or the reverse), one of the command's `inputs`, or a
    place that cannot be written."""
    noun = "output folder" if folder else "output file"
    if target.is_symlink() or target.exists():
        kind = _kind(target)
        if kind != ("a folder" if folder else "a file"):
            raise IA2Error(f"{target}: the {noun} is {kind}")
    for given in inputs:
        if target.exists() and given.exists() and os.path.samefile(target, given):
            raise IA2Error(f"{target}: the {noun} is the input file {given}; write it elsewhere")
    places = [_nearest(target.parent)] + ([target] if target.is_dir() else [])
    for place in places:
        if not place.is_dir():
            raise IA2Error(f"{target}: cannot write the {noun} ({place} is a file: {os.strerror(errno.ENOTDIR)})")
        try:
            handle, probe = tempfile.mkstemp(prefix=".ia2-write-test-", dir=place)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            raise IA2Error(f"{target}: cannot write the {noun} ({exc.strerror})") from None


def _nearest(path: Path) -> Path:
    """The path, or its nearest ancestor that exists (where a folder to be made would be made)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it is there (another process sharing the cache may have removed it first)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: Path, obj: Any) -> None:
    """Write JSON atomically, indented, keys in insertion order."""
    write_text(target, json.dumps(obj, indent=2) + "\n")
