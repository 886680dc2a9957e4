"""BIG-bench classification tasks, read from the `bigbench` sdist fetched once from PyPI.

Only the requested task's JSON is extracted from the tarball and cached; the sdist is never installed
(it would pull TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import urllib.request
from pathlib import Path

from ..errors import IA2Error
from ..paths import atomic_path, cache_root
from .base import Example, Task

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/"
    + SDIST
)
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sdist_path() -> Path:
    """The bigbench sdist in the cache, downloaded from PyPI (358 MB) and checked on first use."""
    target = cache_root() / "bigbench" / SDIST
    if target.exists():
        return target
    with atomic_path(target) as tmp:
        try:
            urllib.request.urlretrieve(SDIST_URL, tmp)
        except OSError as exc:
            raise IA2Error(f"cannot download the bigbench sdist from PyPI: {exc}") from exc
        if _sha256(tmp) != SDIST_SHA256:
            raise IA2Error(f"{SDIST}: sha256 mismatch after download")
    return target


def task_json(name: str) -> Path:
    """Extract `<name>/task.json` from the sdist once; later calls read the cached copy."""
    target = cache_root() / "bigbench" / "tasks" / f"{name}.json"
    if target.exists():
        return target
    member = f"{TASKS_DIR}/{name}/task.json"
    with tarfile.open(sdist_path(), "r:gz") as tar:
        try:
            handle = tar.extractfile(member)
        except KeyError:
            raise IA2Error(f"unknown task 'bigbench:{name}': no {name}/task.json in {SDIST}") from None
        with atomic_path(target) as tmp:
            tmp.write_bytes(handle.read())
    return target


def parse(name: str, data: dict, where: str) -> Task:
    """A Task from BIG-bench task JSON with one fixed label set (`target_scores` keys)."""
    examples, labels = [], None
    for i, row in enumerate(data.get("examples", [])):
        scores = row.get("target_scores")
        if not isinstance(scores, dict) or not scores:
            raise IA2Error(f"{where}: example {i}: field 'target_scores' missing; only multiple-choice tasks with fixed labels are supported")
        keys = tuple(sorted(scores))
        if labels is None:
            labels = keys
        elif keys != labels:
            raise IA2Error(f"{where}: example {i}: field 'target_scores' has labels {list(keys)}, not the task's {list(labels)}")
        answer = max(scores, key=lambda k: scores[k])
        examples.append(Example(row["input"].strip(), answer, f"{where}:example {i}"))
    if not examples:
        raise IA2Error(f"{where}: no examples")
    in_prefix = data.get("example_input_prefix", "\nQ: ").strip()
    out_prefix = data.get("example_output_prefix", "\nA: ").strip()
    template = (in_prefix + " " if in_prefix else "") + "{question}" + ("\n" + out_prefix if out_prefix else "")
    instruction = data.get("task_prefix", "").strip()
    return Task(
        name=f"bigbench:{name}",
        examples=tuple(examples),
        labels=labels,
        template=template,
        instruction=instruction + "\n\n" if instruction else "",
        source=f"{SDIST}:{name}",
    )


def read(name: str) -> dict:
    """The raw task JSON of BIG-bench task `name`, fetched and cached on first use."""
    return json.loads(task_json(name).read_text())


def load(name: str) -> Task:
    """The BIG-bench task `name`, fetched and cached on first use."""
    return parse(name, read(name), f"bigbench:{name}")
