"""Output locks: one command writes an output at a time. A lock file records its holder's pid, host and command; a
lock whose holder is no longer running on this host is stale, and taken over with a log line."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ia2.errors import IA2Error

log = logging.getLogger(__name__)
NAME = ".ia2.lock"
# The command line a lock names as its holder's (`ia2 ...` once the CLI has set it).
command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
# Lock files this process holds, with how many times: a command may take a lock it holds again (a sweep's cells).
_held: dict[Path, int] = {}


def inside(folder: Path) -> Path:
    """The lock file of a folder that outlives the command (a run's), kept in the folder itself."""
    return folder / NAME


def beside(target: Path) -> Path:
    """The lock file of an output that is written whole and renamed into place (a file, an adapter), beside it."""
    target = target.absolute()
    return target.parent / f".{target.name}{NAME}"


@contextmanager
def holding(locks: Sequence[Path]) -> Iterator[None]:
    """Hold every lock file of `locks` while the block runs, or raise one line naming the holder of one of them.
    Under a launcher only the main process takes them; every process learns whether it could."""
    from ia2.model import distributed

    with ExitStack() as stack:
        refusal = None
        if distributed.is_main():
            try:
                for path in locks:
                    stack.enter_context(_lock(path))
            except IA2Error as exc:
                refusal = str(exc)
        refusal = distributed.from_main(refusal)
        if refusal:
            raise IA2Error(refusal)
        yield


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One lock file, taken (again, when this process holds it) for the block."""
    path = path.absolute()
    if path not in _held:
        _take(path)
    _held[path] = _held.get(path, 0) + 1
    try:
        yield
    finally:
        _held[path] -= 1
        if not _held[path]:
            del _held[path]
            _release(path)


def _release(path: Path) -> None:
    """Delete the lock file if it still names this process (a process that wrongly judged it stale may hold it)."""
    try:
        holder = _holder(path)
    except IA2Error:
        return
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _take(path: Path) -> None:
    """Create the lock file with this process as its holder; a stale one (its holder gone from this host) is taken
    over, a live one refused naming its holder."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.strftime("%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path, me):
            return
        holder = _holder(path)
        if holder is None:
            continue
        if not _stale(holder):
            raise IA2Error(
                f"{path.parent}: in use by `{holder.get('command', '?')}` (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since', '?')}); wait for it to finish, or delete {path} "
                "if that process is gone"
            )
        if _remove_stale(path, holder):
            log.warning(
                "%s: taking over the lock of pid %s (`%s`), which is no longer running",
                path,
                holder.get("pid"),
                holder.get("command"),
            )
    raise IA2Error(f"{path}: another process keeps taking this lock; try again")


def _remove_stale(path: Path, holder: dict) -> bool:
    """Delete a stale lock file unless another process is deleting or has replaced it: the file is flocked while it
    is checked and deleted, so of two processes that judged it stale only one deletes it, and the other then meets
    the winner's new lock (or none, and races for it with the atomic create)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(handle).st_ino != os.stat(path).st_ino or _holder(path) != holder:
            return False
        path.unlink()
        return True
    except (BlockingIOError, FileNotFoundError):
        return False
    finally:
        os.close(handle)


def _create(path: Path, record: dict) -> bool:
    """Create `path` holding `record`, whole or not at all (a linked temporary file); False if it exists."""
    handle, tmp = tempfile.mkstemp(prefix=".ia2-lock-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(record, f)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _holder(path: Path) -> dict | None:
    """The lock file's record; None when it went away meanwhile."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IA2Error(f"{path}: a lock file ia2 cannot read; delete it if no ia2 command writes here") from None
    return record if isinstance(record, dict) else {}


def _stale(holder: dict) -> bool:
    """Whether the holder is known to be gone: a pid of this host that no longer runs."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
