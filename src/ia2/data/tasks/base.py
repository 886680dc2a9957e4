"""What a task is: labelled examples plus the declaration of how to prompt and score them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ia2.errors import IA2Error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One labelled example; `where` names its origin (file and line) for error messages."""

    question: str
    answer: str
    where: str = ""
    split: str | None = None


@dataclass(frozen=True)
class Task:
    """A task: examples, how to prompt them, and how to score an answer.

    A prompt is `instruction + question(q)`; an answer is rendered as `answer_prefix + answer`;
    demonstrations are `question(d) + answer(d)` joined by `separator`. A classification task lists its
    `labels`, each scored by its log-probability summed over its tokens (`label_score` "mean": averaged, i.e.
    length-normalised), renormalised over the labels; a generative task has no labels, generates up to
    `max_new_tokens` tokens cut at the first of `stop`, and is scored by the answer extractor named `parser`
    (see `ia2.data.parsers`) applied to both the generation and the gold answer.
    """

    name: str
    examples: tuple[Example, ...]
    labels: tuple[str, ...] = ()
    template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    separator: str = "\n\n"
    instruction: str = ""
    max_new_tokens: int = 1
    label_score: str = "sum"
    parser: str | None = None
    stop: tuple[str, ...] = ("\n\n",)
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def generative(self) -> bool:
        """True for free-text tasks scored by a parser, False for label classification."""
        return not self.labels

    def question(self, example: Example) -> str:
        """The query text of an example, without demonstrations."""
        return self.template.format(question=example.question)

    def render_answer(self, answer: str) -> str:
        """The answer text as it follows a question."""
        return self.answer_prefix + answer

    def first_where(self, answer: str) -> str:
        """Where `answer` is first a gold answer (FILE:LINE for a JSONL task), or the task's name when it never is."""
        return next((e.where for e in self.examples if e.answer == answer), self.name)

    def check_label_case(self) -> None:
        """Refuse labels that differ only in case ('Positive', 'positive'): they would be scored as two classes."""
        seen: dict[str, str] = {}
        for label in self.labels:
            other = seen.setdefault(label.casefold(), label)
            if other != label:
                raise IA2Error(
                    f"labels {other!r} ({self.first_where(other)}) and {label!r} ({self.first_where(label)}) "
                    "differ only in case: normalise them"
                )

    def data_hash(self) -> str:
        """A hash of the examples, labels and template: it changes whenever the data or its rendering does."""
        payload = json.dumps(
            [
                self.template,
                self.answer_prefix,
                self.separator,
                self.instruction,
                list(self.labels),
                self.parser,
                list(self.stop),
                [(e.question, e.answer, e.split) for e in self.examples],
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def unique(self) -> Task:
        """The task without examples whose question repeats an earlier one, so that no test query can also be a
        training example or a demonstration; the first is kept, and one log line gives the number dropped.

        A user's JSONL file may not repeat a question with a different answer (`jsonl.load` refuses it), but
        BIG-bench and benchmark data cannot be edited, so there the first answer wins and the log line is a warning
        counting the repeats that disagreed (BIG-bench's sports_understanding repeats 14 inputs).
        """
        first: dict[str, Example] = {}
        conflicts = 0
        for e in self.examples:
            if e.question in first:
                conflicts += first[e.question].answer != e.answer
            else:
                first[e.question] = e
        if len(first) == len(self.examples):
            return self
        dropped = len(self.examples) - len(first)
        if conflicts:
            log.warning(
                "%s: %d repeated questions dropped (the first of each kept), %d of them with a different answer",
                self.name,
                dropped,
                conflicts,
            )
        else:
            log.info("%s: %d repeated questions dropped (the first of each kept)", self.name, dropped)
        return replace(self, examples=tuple(first.values()))


def check_sizes(task: Task, n: int, n_dev: int, n_test: int, unlabelled: int = 0) -> None:
    """Refuse a task too small for n training, n_dev dev (and `unlabelled` low-data) examples plus n_test test ones,
    naming the part that is short: with rows marked `split: test`, those and the rest separately, else all examples."""
    need = n + n_dev + unlabelled
    parts = f"N={n} + dev={n_dev}" + (f" + unlabelled={unlabelled}" if unlabelled else "")
    marked = sum(e.split == "test" for e in task.examples)
    if not marked and len(task.examples) < need + n_test:
        raise IA2Error(f"{task.name}: {len(task.examples)} examples, but {parts} + test={n_test} need {need + n_test}")
    if marked and marked < n_test:
        raise IA2Error(f"{task.name}: {marked} examples have split 'test' but n_test={n_test}")
    if marked and len(task.examples) - marked < need:
        rest = len(task.examples) - marked
        raise IA2Error(f"{task.name}: {rest} examples outside the test split, but {parts} need {need}")


@dataclass(frozen=True)
class Source:
    """A kind of task spec, declared by name in `ia2.registry.SOURCES`: `load(argument, labels)` gives the task that
    `name:argument` names (or the bare `name`, for a source that takes no argument), refusing `labels` it does not
    allow; `known` spells its tasks for the list an unknown task's error gives."""

    load: Callable[[str, tuple[str, ...] | None], Task]
    known: tuple[str, ...]
    argument: bool = True
