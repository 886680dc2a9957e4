"""The task registry: `bigbench:<task>` and `jsonl:<path>`."""

from __future__ import annotations

from ..errors import IA2Error
from . import bigbench, jsonl
from .base import Example, Task

__all__ = ["Example", "Task", "load_task"]

SOURCES = {"bigbench": lambda arg, labels: bigbench.load(arg), "jsonl": jsonl.load}


def load_task(spec: str, labels: tuple[str, ...] | None = None) -> Task:
    """Resolve a task spec `source:argument` to a Task."""
    source, _, arg = spec.partition(":")
    if source not in SOURCES or not arg:
        raise IA2Error(f"unknown task {spec!r}: expected one of " + ", ".join(f"{s}:<name>" for s in SOURCES))
    return SOURCES[source](arg, labels)
