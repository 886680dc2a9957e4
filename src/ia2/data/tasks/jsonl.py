"""Local JSONL tasks: one object per line with `question`, `answer` and an optional `split`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ia2.data.tasks.base import Example, Task
from ia2.errors import IA2Error

# `split` values: "test" rows are the held-out test set; absent or "train" rows are the pool each seed draws its
# training and dev examples from, so "dev" (or "validation") is refused rather than taken as training data.
SPLITS = ("train", "test")


def lines(data: bytes, origin: str) -> Iterator[tuple[str, str]]:
    """(ORIGIN:LINE, text) of each non-blank line, decoded line by line so a bad byte is reported where it is."""
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{origin}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IA2Error(
                f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            ) from None
        if line.strip():
            yield where, line


def json_object(where: str, line: str) -> dict:
    """One line's JSON object, or an IA2Error naming its FILE:LINE."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise IA2Error(f"{where}: malformed JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise IA2Error(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _example(where: str, line: str, answers: bool = True) -> Example:
    """One line's example, failing with its FILE:LINE and the first bad field (`answer` optional unless
    `answers`; an absent one is "")."""
    row = json_object(where, line)
    for key in ("question", "answer") if answers or "answer" in row else ("question",):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise IA2Error(f"{where}: field {key!r} is missing or not a non-empty string")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise IA2Error(f"{where}: field 'split' = {split!r} is not one of {list(SPLITS)} (or absent)")
    return Example(row["question"], row.get("answer", "").strip(), where, split)


def read_jsonl(path: Path, answers: bool = True) -> list[Example]:
    """Read examples, failing with the file, line and field of the first bad row. A row's `split` is absent or
    "train" (the training pool) or "test" (the held-out test set); any other value is an error. Without `answers`
    (inputs to predict on) a row may omit its answer."""
    if path.is_dir():
        raise IA2Error(f"{path}: a folder, not a JSONL file")
    if not path.is_file():
        raise IA2Error(f"{path}: no such file")
    examples = [_example(where, line, answers) for where, line in lines(path.read_bytes(), str(path))]
    if not examples:
        raise IA2Error(f"{path}: no examples")
    return examples


def _check_given_labels(file: Path, examples: list[Example], labels: tuple[str, ...]) -> None:
    """Given labels must be the answers: an answer outside them, or a label no row answers (a typo, or a class the
    file lacks), is an error."""
    for e in examples:
        if e.answer not in labels:
            raise IA2Error(f"{e.where}: field 'answer' = {e.answer!r} is not one of --labels {list(labels)}")
    absent = [label for label in labels if label not in {e.answer for e in examples}]
    if absent:
        one = len(absent) == 1
        raise IA2Error(
            f"label{'' if one else 's'} {', '.join(map(repr, absent))} given in labels never "
            f"occur{'s' if one else ''} as an answer in {file}"
        )


def _check_repeats(examples: list[Example]) -> None:
    """Refuse a question asked twice with different answers, since which one is gold would be arbitrary (exact
    repeats are dropped by `Task.unique`)."""
    first: dict[str, Example] = {}
    for e in examples:
        seen = first.setdefault(e.question, e)
        if seen.answer != e.answer:
            raise IA2Error(
                f"{e.where}: field 'question' repeats {seen.where} with answer {e.answer!r}, not "
                f"{seen.answer!r}: keep one of them"
            )


def load(path: str, labels: tuple[str, ...] | None = None) -> Task:
    """A task from a JSONL file; labels are the distinct answers unless given, and then each must occur as one."""
    file = Path(path).expanduser()
    examples = read_jsonl(file)
    if labels is None:
        labels = tuple(sorted({e.answer for e in examples}))
    else:
        _check_given_labels(file, examples, labels)
    _check_repeats(examples)
    if len(labels) < 2:
        raise IA2Error(f"{file}: field 'answer' has fewer than two distinct labels {list(labels)}")
    return Task(name=f"jsonl:{path}", examples=tuple(examples), labels=labels, source=str(file))
