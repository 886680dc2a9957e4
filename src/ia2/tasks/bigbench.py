"""BIG-bench classification tasks, read from the `bigbench` sdist fetched once with pip.

Only the requested task's JSON is extracted from the tarball and cached; the sdist is never installed
(it would pull TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

from ..errors import IA2Error
from ..paths import atomic_path, cache_root
from .base import Example, Task

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"
# multiemo's English sentence-level sets, by domain; `all` pools the four.
MULTIEMO_DOMAINS = ("products", "hotels", "medicine", "reviews", "all")
MULTIEMO_BINARY = ("negative", "positive")

log = logging.getLogger(__name__)


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


def parse(name: str, data: dict, where: str, rows: list[tuple[int, dict]] | None = None) -> Task:
    """A Task from BIG-bench task JSON with one fixed label set (`target_scores` keys); `rows`, numbered as in the
    file, replaces the file's examples when only some are kept."""
    examples, labels = [], None
    for i, row in enumerate(data.get("examples", [])) if rows is None else rows:
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


def multiemo(domain: str, binary: bool) -> Task:
    """BIG-bench multiemo's English sentences of one domain: positive vs negative (the closest offline analog of
    SST-2), or all four classes. Rows with an empty input (1-4 per set) are dropped and counted, in the log and in
    `extra`; repeated inputs are dropped by `Task.unique`, as for every task. Row numbers stay those of the file."""
    if domain not in MULTIEMO_DOMAINS:
        raise IA2Error(f"unknown multiemo domain {domain!r}: expected one of {', '.join(MULTIEMO_DOMAINS)}")
    name = f"multiemo/{domain}_sentence_en"
    data = read(name)
    rows = list(enumerate(data.get("examples", [])))
    kept = [(i, r) for i, r in rows if str(r.get("input", "")).strip()]
    empty = len(rows) - len(kept)
    if binary:
        kept = [
            (i, {**r, "target_scores": {k: r["target_scores"][k] for k in MULTIEMO_BINARY}})
            for i, r in kept
            if max(r["target_scores"], key=r["target_scores"].get) in MULTIEMO_BINARY
        ]
    log.info("bigbench:%s: %d of %d rows kept, %d with an empty input dropped", name, len(kept), len(rows), empty)
    classes = "positive or negative" if binary else "positive, negative, neutral or ambivalent"
    declared = {**data, "task_prefix": f"Determine whether given opinion is {classes} in terms of its sentiment."}
    task = parse(name, declared, f"bigbench:{name}", kept)
    return replace(task, name=f"multiemo:{domain}" if binary else f"multiemo4:{domain}", extra={"dropped_empty": empty})
