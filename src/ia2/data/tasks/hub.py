"""Hugging Face hub datasets as task declarations: which dataset and splits, how a row becomes an Example.

A `HubSpec` says everything about a benchmark as data: hub id, config, pinned revision, the splits that feed the
training pool and the held-out test set, a row filter, a row -> (question, answer) conversion and the Task-level
prompt and scoring fields. `load(spec)` reads the splits with `datasets`, shuffles each with seed 42 (HF
`Dataset.shuffle(seed=42)`, as the reference does), filters, and keeps the first `pool_size` / `test_size` rows.
When `train_split == test_split` the last `test_size` kept rows are the test set and the rest the pool.

Air-gapped clusters: set `IA2_HUB_MIRROR` to a folder holding each dataset at `<mirror>/<path>[/<subset>]`
(subset = the config or data folder), e.g. `hf download --repo-type dataset stanfordnlp/sst2 --revision <revision>
--local-dir $IA2_HUB_MIRROR/stanfordnlp/sst2`, or plain `train.jsonl` / `validation.parquet` / `test.jsonl` files;
`datasets` infers the splits from the file names. Examples keep their `hub:` origin, so a mirror gives the same Task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ia2.data.tasks.base import Example, Task
from ia2.errors import IA2Error

if TYPE_CHECKING:
    from datasets import Dataset

SEED = 42
MIRROR_ENV = "IA2_HUB_MIRROR"
QA = "Question: {question}\nAnswer:"
ROW = "__ia2_row__"

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Fields:
    """Record -> (question, answer) by field names.

    `relabel` maps the raw answer value before it becomes a string; `max_chars` cuts a longer question to that many
    characters and then drops the last, possibly partial, word (as the reference does for BBC News).
    """

    question: str
    answer: str
    relabel: Mapping[Any, Any] | None = None
    max_chars: int | None = None

    def __call__(self, row: Record) -> tuple[str, str]:
        value = row[self.answer]
        if self.relabel is not None:
            if value not in self.relabel:
                raise ValueError(f"field {self.answer!r} = {value!r} has no relabelling")
            value = self.relabel[value]
        text = str(row[self.question])
        if self.max_chars is not None and len(text) > self.max_chars:
            text = text[: self.max_chars].rsplit(" ", 1)[0]
        return text.strip(), str(value)


@dataclass(frozen=True)
class FieldIn:
    """Record filter: keep rows whose `field` is one of `values`."""

    field: str
    values: frozenset

    def __call__(self, row: Record) -> bool:
        return row[self.field] in self.values


@dataclass(frozen=True)
class HubSpec:
    """A benchmark declared as data: where its rows live, how they become Examples, how they are prompted and scored."""

    name: str
    path: str
    config: str | None
    convert: Callable[[Record], tuple[str, str]]
    test_split: str
    train_split: str | None = None
    revision: str = "main"
    data_dir: str | None = None
    keep: Callable[[Record], bool] | None = None
    pool_size: int = 2000
    test_size: int = 500
    template: str = QA
    labels: tuple[str, ...] = ()
    answer_prefix: str = " "
    parser: str | None = None
    stop: tuple[str, ...] = ("\n\n",)
    max_new_tokens: int = 1
    label_shift: bool = False

    @property
    def subset(self) -> str | None:
        """The config or data folder that selects this benchmark's part of the dataset, if any."""
        return self.config or self.data_dir

    @property
    def hub_id(self) -> str:
        """`path[/subset]`: the dataset's name in messages and its folder under a mirror."""
        return f"{self.path}/{self.subset}" if self.subset else self.path


class Unreachable(IA2Error):
    """A dataset that cannot be read from the hub or the mirror (as opposed to bad rows in it)."""


@dataclass(frozen=True)
class Source:
    """Where a declaration's rows come from: `origin` prefixes each Example's `where`, `detail` is the Task's
    `source`."""

    origin: str
    detail: str
    read: Callable[[str], Dataset]


def _first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _mirror_args(spec: HubSpec, mirror: str) -> tuple[str, str | None]:
    """The mirror folder and config to hand to `load_dataset`: `<path>/<subset>` if present, else `<path>` + config."""
    folder = Path(mirror).expanduser() / spec.path
    if spec.subset and (folder / spec.subset).is_dir():
        return str(folder / spec.subset), None
    if not folder.is_dir():
        raise Unreachable(f"{spec.name}: no mirror folder {folder / (spec.subset or '')} under ${MIRROR_ENV}")
    return str(folder), spec.config


def hub_source(spec: HubSpec) -> Source:
    """The spec's own hub dataset, or its copy under $IA2_HUB_MIRROR when that is set."""
    mirror = os.environ.get(MIRROR_ENV)

    def read(split: str) -> Dataset:
        import datasets  # deferred: importing `datasets` costs seconds and only hub tasks need it

        try:
            if mirror:
                path, config = _mirror_args(spec, mirror)
                return datasets.load_dataset(path, config, split=split)
            return datasets.load_dataset(
                spec.path, spec.config, data_dir=spec.data_dir, split=split, revision=spec.revision
            )
        except IA2Error:
            raise
        except Exception as exc:  # datasets raises many types (hub, file, split, network); report them alike
            raise Unreachable(f"{spec.name}: cannot load {spec.hub_id} split {split!r}: {_first_line(exc)}") from exc

    detail = f"{MIRROR_ENV}={mirror}:{spec.hub_id}" if mirror else f"hub:{spec.hub_id}@{spec.revision}"
    return Source(f"hub:{spec.hub_id}", detail, read)


def _kept_rows(spec: HubSpec, source: Source, split: str) -> Iterator[tuple[int, dict]]:
    """(original row index, row) in seed-42 shuffled order, filtered by `spec.keep`."""
    data = source.read(split)
    shuffled = data.add_column(ROW, list(range(len(data)))).shuffle(seed=SEED)
    for row in shuffled:
        index = row.pop(ROW)
        if spec.keep is None or _guarded(spec, source, split, index, spec.keep, row):
            yield index, row


def _guarded(spec: HubSpec, source: Source, split: str, index: int, fn: Callable[[Record], Any], row: Record) -> Any:
    """`fn(row)`, turning a missing field or a bad value into an IA2Error naming dataset, split, row and field."""
    present = {k: v for k, v in row.items() if v is not None}
    at = f"{spec.name} ({source.origin}) split {split!r} row {index}"
    try:
        return fn(present)
    except KeyError as exc:
        raise IA2Error(f"{at}: field {exc.args[0]!r} is missing") from None
    except (ValueError, TypeError, IndexError) as exc:
        raise IA2Error(f"{at}: {exc}") from None


def _example(spec: HubSpec, source: Source, split: str, index: int, row: Record, role: str) -> Example:
    """One converted row, its answer checked against the declared labels."""
    question, answer = _guarded(spec, source, split, index, spec.convert, row)
    where = f"{source.origin}:{split}:row {index}"
    if spec.labels and answer not in spec.labels:
        raise IA2Error(f"{where}: answer {answer!r} is not one of {spec.name}'s labels {list(spec.labels)}")
    return Example(question, answer, where, role)


def _take(spec: HubSpec, source: Source, split: str, n: int | None, role: str) -> list[Example]:
    """The first `n` (all if None) kept rows of a split as Examples marked `role`."""
    rows = (_example(spec, source, split, index, row, role) for index, row in _kept_rows(spec, source, split))
    return list(islice(rows, n))


def examples(spec: HubSpec, source: Source) -> list[Example]:
    """The training pool (split "train") followed by the held-out test rows (split "test")."""
    if spec.train_split is None:
        return _take(spec, source, spec.test_split, spec.test_size, "test")
    if spec.train_split == spec.test_split:
        rows = _take(spec, source, spec.test_split, None, "train")
        if len(rows) <= spec.test_size:
            raise IA2Error(
                f"{spec.name}: split {spec.test_split!r} has only {len(rows)} rows; {spec.test_size} are held out"
            )
        cut = len(rows) - spec.test_size
        test = [replace(e, split="test") for e in rows[cut:]]
        return rows[:cut][: spec.pool_size] + test
    pool = _take(spec, source, spec.train_split, spec.pool_size, "train")
    return pool + _take(spec, source, spec.test_split, spec.test_size, "test")


def load(spec: HubSpec, source: Source | None = None, name: str | None = None) -> Task:
    """The Task a spec declares, read from the hub (or the mirror), or from an alternative `source` of the same rows."""
    source = source or hub_source(spec)
    rows = examples(spec, source)
    if not rows:
        raise IA2Error(f"{spec.name} ({source.origin}): no examples")
    return Task(
        name=name or spec.name,
        examples=tuple(rows),
        labels=spec.labels,
        template=spec.template,
        answer_prefix=spec.answer_prefix,
        max_new_tokens=spec.max_new_tokens,
        parser=spec.parser,
        stop=spec.stop,
        source=source.detail,
        extra={"label_shift": spec.label_shift},
    )
