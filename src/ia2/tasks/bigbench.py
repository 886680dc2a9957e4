"""BIG-bench classification tasks, read from the `bigbench` sdist fetched once with pip.

Only the requested task's JSON is extracted from the tarball and cached; the sdist is never installed
(it would pull TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from ..errors import IA2Error
from ..paths import atomic_path, cache_root
from .base import Example, Task

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(folder: Path) -> None:
    """Save the bigbench sdist into `folder` with `pip download`, so the user's pip configuration (index, mirror,
    proxy, certificates) applies; without its dependencies, and never a wheel."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        "bigbench",
        "bigbench==1.0.0",
        "-d",
        str(folder),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {result.returncode}"
        raise IA2Error(f"cannot download the bigbench sdist: `pip {' '.join(command[3:])}` failed: {last}")


def sdist_path() -> Path:
    """The bigbench sdist in the cache, downloaded by pip (358 MB) into a temporary folder and checked on first use."""
    target = cache_root() / "bigbench" / SDIST
    if target.exists():
        return target
    with atomic_path(target) as tmp:
        pip_download(tmp.parent)
        if not tmp.is_file():
            raise IA2Error(f"cannot download the bigbench sdist: the download saved no {SDIST}")
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
            raise IA2Error(
                f"{where}: example {i}: field 'target_scores' missing; only multiple-choice tasks with fixed labels "
                "are supported"
            )
        keys = tuple(sorted(scores))
        if labels is None:
            labels = keys
        elif keys != labels:
            raise IA2Error(
                f"{where}: example {i}: field 'target_scores' has labels {list(keys)}, not the task's {list(labels)}"
            )
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
