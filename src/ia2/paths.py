"""Where ia2 keeps its caches, and atomic writes so nothing half-written looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import IA2Error


def cache_root() -> Path:
    """The cache folder: $IA2_CACHE, else ~/.cache/ia2."""
    return Path(os.environ.get("IA2_CACHE", Path.home() / ".cache" / "ia2"))


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` (file or folder); rename it onto `target` on success."""
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
