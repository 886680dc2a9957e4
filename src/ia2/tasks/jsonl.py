"""Local JSONL tasks: one object per line with `question`, `answer` and an optional `split`."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import IA2Error
from .base import Example, Task


def read_jsonl(path: Path) -> list[Example]:
    """Read examples, failing with the file, line and field of the first bad row."""
    if not path.is_file():
        raise IA2Error(f"{path}: no such file")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IA2Error(f"{where}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise IA2Error(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise IA2Error(f"{where}: field {key!r} is missing or not a non-empty string")
        split = row.get("split")
        if split is not None and not isinstance(split, str):
            raise IA2Error(f"{where}: field 'split' must be a string")
        examples.append(Example(row["question"], row["answer"].strip(), where, split))
    if not examples:
        raise IA2Error(f"{path}: no examples")
    return examples


def load(path: str, labels: tuple[str, ...] | None = None) -> Task:
    """A task from a JSONL file; labels are the distinct answers unless given."""
    file = Path(path).expanduser()
    examples = read_jsonl(file)
    if labels is None:
        labels = tuple(sorted({e.answer for e in examples}))
    else:
        for e in examples:
            if e.answer not in labels:
                raise IA2Error(f"{e.where}: field 'answer' = {e.answer!r} is not one of --labels {list(labels)}")
    if len(labels) < 2:
        raise IA2Error(f"{file}: field 'answer' has fewer than two distinct labels {list(labels)}")
    return Task(name=f"jsonl:{path}", examples=tuple(examples), labels=labels, source=str(file))
