"""BIG-bench classification tasks, from a local copy of the `bigbench` 1.0.0 sdist or from the hub's BIG-bench datasets.

The registry no longer serves the 1.0.0 sdist (358 MB of task JSON), so ia2 does not download it: a user who has it
names it with $IA2_BIGBENCH_SDIST (checked by sha256; only the requested task's JSON is extracted and cached), or
keeps it where ia2 0.2 cached it. Without one, the task is read from the hub's `tasksource/bigbench` through
`datasets` (or its copy under $IA2_HUB_MIRROR); when neither is there, one line names both ways.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import replace
from pathlib import Path

from ia2.data.tasks.base import Example, Task
from ia2.data.tasks.hub import HubSpec, hub_source
from ia2.data.tasks.packaged import sha256
from ia2.errors import IA2Error
from ia2.paths import atomic_path, cache_root

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SDIST_ENV = "IA2_BIGBENCH_SDIST"
TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"
HUB = "tasksource/bigbench"
HUB_SPLITS = ("train", "validation")
# multiemo's English sentence-level sets, by domain; `all` pools the four.
MULTIEMO_DOMAINS = ("products", "hotels", "medicine", "reviews", "all")
MULTIEMO_BINARY = ("negative", "positive")

log = logging.getLogger(__name__)


def sdist_path() -> Path | None:
    """The checked local sdist: $IA2_BIGBENCH_SDIST, else the copy ia2 0.2 cached; None when there is neither."""
    named = os.environ.get(SDIST_ENV)
    path = Path(named).expanduser() if named else cache_root() / "bigbench" / SDIST
    if not path.is_file():
        if named:
            raise IA2Error(f"${SDIST_ENV}={named}: no such file")
        return None
    if sha256(path) != SDIST_SHA256:
        raise IA2Error(f"{path}: not the bigbench 1.0.0 sdist (sha256 mismatch)")
    return path


def _extract(sdist: Path, name: str) -> Path:
    """Extract `<name>/task.json` from the sdist into the cache once."""
    target = cache_root() / "bigbench" / "tasks" / f"{name}.json"
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            handle = tar.extractfile(f"{TASKS_DIR}/{name}/task.json")
        except KeyError:
            raise IA2Error(f"unknown task 'bigbench:{name}': no {name}/task.json in {SDIST}") from None
        with atomic_path(target) as tmp:
            tmp.write_bytes(handle.read())
    return target


def _hub_example(row: dict) -> dict:
    """A hub row (`inputs`, `multiple_choice_targets`, `multiple_choice_scores`) as a task-JSON example."""
    scores = dict(zip(row.get("multiple_choice_targets") or [], row.get("multiple_choice_scores") or [], strict=True))
    return {"input": row.get("inputs"), "target_scores": scores}


def _from_hub(name: str) -> dict:
    """Task `name` from the hub's BIG-bench (train and validation pooled, as the task JSON has one list)."""
    config, _, subtask = name.partition("/")
    if subtask:
        raise IA2Error(f"bigbench:{name}: the hub's {HUB} does not split task {config!r} into subtasks")
    source = hub_source(HubSpec(f"bigbench:{name}", HUB, config, _hub_example, test_split=HUB_SPLITS[0]))
    return {"examples": [_hub_example(row) for split in HUB_SPLITS for row in source.read(split)]}


def read(name: str) -> dict:
    """The raw task JSON of BIG-bench task `name`: cached, from the local sdist, or from the hub."""
    cached = cache_root() / "bigbench" / "tasks" / f"{name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    sdist = sdist_path()
    if sdist is not None:
        return json.loads(_extract(sdist, name).read_text())
    try:
        return _from_hub(name)
    except IA2Error as exc:
        raise IA2Error(
            f"bigbench:{name}: BIG-bench's task files are not here: set ${SDIST_ENV} to a copy of {SDIST}, or let "
            f"`datasets` reach the hub's {HUB} (or a copy under $IA2_HUB_MIRROR); the hub: {exc}"
        ) from None


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


def load(name: str) -> Task:
    """The BIG-bench task `name` (see `read` for where it comes from)."""
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
