"""What a task is: labelled examples plus the declaration of how to prompt and score them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace


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
    `labels` and is scored on the first answer token (T = 1); a generative task has no labels, generates up to
    `max_new_tokens` tokens cut at the first of `stop`, and is scored by the answer extractor named `parser`
    (see `ia2.parsers`) applied to both the generation and the gold answer.
    """

    name: str
    examples: tuple[Example, ...]
    labels: tuple[str, ...] = ()
    template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    separator: str = "\n\n"
    instruction: str = ""
    max_new_tokens: int = 1
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

    def data_hash(self) -> str:
        """A hash of the examples, labels and template: it changes whenever the data or its rendering does."""
        payload = json.dumps(
            [self.template, self.answer_prefix, self.separator, self.instruction, list(self.labels), self.parser, list(self.stop),
             [(e.question, e.answer, e.split) for e in self.examples]]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def unique(self) -> Task:
        """The task without examples whose question repeats an earlier one (first kept), so that no test query can
        also be a training example or a demonstration (BIG-bench's sports_understanding repeats 14 inputs)."""
        seen: set[str] = set()
        kept = [e for e in self.examples if not (e.question in seen or seen.add(e.question))]
        return self if len(kept) == len(self.examples) else replace(self, examples=tuple(kept))
