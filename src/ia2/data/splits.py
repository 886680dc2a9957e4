"""Which examples a run holds out for testing, and which each seed trains, develops and (low-data mode) queries on."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ia2.config import DataConfig
from ia2.data.tasks import Task, check_sizes


@dataclass(frozen=True)
class Split:
    """Indices into the task's examples for one seed; the test set is the same for every seed."""

    train: list[int]
    dev: list[int]
    test: list[int]
    unlabelled: list[int] = field(default_factory=list)


def marked_test(task: Task, n_test: int, data_seed: int) -> tuple[list[int], list[int]]:
    """The held-out test indices (the task's `split: test` rows if any, else a seeded draw) and the rest."""
    marked = [i for i, e in enumerate(task.examples) if e.split == "test"]
    if marked:
        return marked[:n_test], [i for i, e in enumerate(task.examples) if e.split != "test"]
    order = list(range(len(task.examples)))
    random.Random(data_seed).shuffle(order)
    return order[:n_test], order[n_test:]


def test_and_pool(task: Task, data: DataConfig) -> tuple[list[int], list[int]]:
    """The held-out test indices and the training pool, checked to be large enough for N + dev + test."""
    drawn = data.unlabelled if isinstance(data.unlabelled, int) else 0
    check_sizes(task, data.n_train, data.dev_size, data.n_test, drawn)
    return marked_test(task, data.n_test, data.data_seed)


def draw_split(test: list[int], pool: list[int], data: DataConfig, seed: int, from_file: list[int] = ()) -> Split:
    """N training and N/2 dev examples drawn from the pool by `seed`, and in low-data mode the unlabelled queries:
    those `from_file` (a file's, appended to the task), or M drawn from the rest of the pool (the labelled draw is
    the same with or without them)."""
    chosen = random.Random(f"split-{seed}").sample(pool, data.n_train + data.dev_size)
    rest = sorted(set(pool) - set(chosen))
    drawn = isinstance(data.unlabelled, int) and data.unlabelled
    unlabelled = random.Random(f"unlabelled-{seed}").sample(rest, data.unlabelled) if drawn else list(from_file)
    return Split(chosen[: data.n_train], chosen[data.n_train :], test, unlabelled)


def majority(task: Task, test: list[int]) -> float | None:
    """Accuracy of always answering the test set's most frequent label (None for generative tasks)."""
    if task.generative:
        return None
    labels = [task.examples[i].answer for i in test]
    return max(labels.count(c) for c in set(labels)) / len(labels)
