"""Demonstration selection and prompt assembly, returning token ids with the answer boundary checked."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from ia2.config import PromptConfig
from ia2.data.splits import Split
from ia2.data.tasks import Example, Task
from ia2.errors import IA2Error


@dataclass(frozen=True)
class Prompted:
    """A prompt's token ids, the gold answer's ids after it, and the gold label's index (−1 for generative tasks)."""

    prompt: list[int]
    answer: list[int]
    label: int


def draw_demos(pool: Sequence[int], k: int, rng: random.Random, exclude: int | None = None) -> list[int]:
    """k distinct pool indices other than `exclude`, in random order (leave-one-out when exclude is set)."""
    candidates = [i for i in pool if i != exclude]
    if k > len(candidates):
        raise IA2Error(f"cannot draw {k} demonstrations from a pool of {len(candidates)}")
    return rng.sample(candidates, k)


def _check_labels(task: Task, tokenizer: PreTrainedTokenizerBase, label_ids: Sequence[list[int]]) -> None:
    """Refuse labels whose token sequences after the answer prefix are identical: no score can tell them apart."""
    seen: dict[tuple[int, ...], str] = {}
    for label, ids in zip(task.labels, label_ids):
        other = seen.setdefault(tuple(ids), label)
        if other != label:
            raise IA2Error(
                f"{task.name}: labels {other!r} and {label!r} are the same tokens "
                f"{tokenizer.decode(ids)!r} after the answer prefix; no score can tell them apart"
            )


class Encoder:
    """Renders and tokenises prompts for one task and tokenizer; owns the label token ids.

    With `chat`, prompts go through the tokenizer's chat template (for instruct models): each demonstration is a
    user turn (its question) and an assistant turn (its answer), the query a final user turn, and the answer follows
    the assistant header directly.
    """

    def __init__(self, task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int, chat: bool = False) -> None:
        if chat and not tokenizer.chat_template:
            raise IA2Error(f"--chat: the tokenizer of {tokenizer.name_or_path!r} has no chat template")
        task.check_label_case()
        self.task, self.tokenizer, self.max_length, self.chat = task, tokenizer, max_length, chat
        probe = self.text(task.examples[0], [])
        self.label_ids = [self._answer_ids(probe, self.answer_text(label), task.examples[0]) for label in task.labels]
        _check_labels(task, tokenizer, self.label_ids)
        # Labels that share a first token differ only later: the ICL teacher then answers with the label it scores
        # highest as a whole sequence, and its targets cover every token of that label (a T = 1 target could not
        # tell them apart). With distinct first tokens the teacher answers greedily, as the paper's does.
        self.whole_labels = len({ids[0] for ids in self.label_ids}) < len(self.label_ids)

    def label_first(self) -> list[int] | None:
        """The labels' first tokens, by which the full-vocabulary metrics judge an answer; None when two labels share
        one (those metrics could not tell them apart)."""
        return None if self.whole_labels else [ids[0] for ids in self.label_ids]

    def answer_text(self, answer: str) -> str:
        """An answer as it follows its prompt: after the answer prefix, or straight after a chat assistant header."""
        return answer if self.chat else self.task.render_answer(answer)

    def gold_text(self, example: Example) -> str:
        """The gold answer as trained on: the label, or a generative answer followed by the stop string, so a model
        trained on it learns to stop where evaluation and teacher answers are cut."""
        answer = self.answer_text(example.answer)
        return answer + self.task.stop[0] if self.task.generative and self.task.stop else answer

    def tokens(self, text: str) -> list[int]:
        """Token ids; chat-templated text already spells out its special tokens."""
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def _answer_ids(self, prompt: str, answer: str, example: Example) -> list[int]:
        """tokens(prompt + answer) minus tokens(prompt); the prompt's tokens must be a stable prefix."""
        head, full = self.tokens(prompt), self.tokens(prompt + answer)
        if full[: len(head)] != head or len(full) == len(head):
            raise IA2Error(
                f"{example.where}: answer {answer!r} does not tokenise as a clean continuation of its prompt"
            )
        return full[len(head) :]

    def text(self, example: Example, demos: Sequence[Example], demo_task: Task | None = None) -> str:
        """instruction + demos (question + answer, joined by the separator) + separator + question.

        Demonstrations are rendered by `demo_task` (default: this task), so an out-of-distribution query can follow
        demonstrations of the training task.
        """
        task, shown = self.task, demo_task or self.task
        if self.chat:
            turns = [(shown.question(d), d.answer) for d in demos]
            messages = [
                m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
            ]
            messages.append({"role": "user", "content": task.question(example)})
            messages[0]["content"] = task.instruction + messages[0]["content"]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts = [shown.question(d) + shown.render_answer(d.answer) for d in demos] + [task.question(example)]
        return task.instruction + task.separator.join(parts)

    def prompt_ids(self, example: Example, demos: Sequence[Example] = (), demo_task: Task | None = None) -> list[int]:
        """Token ids of the prompt alone (an input without a gold answer), checked against the context."""
        prompt = self.tokens(self.text(example, demos, demo_task))
        if len(prompt) + self.task.max_new_tokens > self.max_length:
            raise _overflow(self, example, demos, demo_task, len(prompt))
        return prompt

    def encode(self, example: Example, demos: Sequence[Example] = (), demo_task: Task | None = None) -> Prompted:
        """Token ids of the prompt and of the gold answer, checked against the label's ids and the context."""
        prompt_text = self.text(example, demos, demo_task)
        prompt = self.prompt_ids(example, demos, demo_task)
        if self.task.generative:
            return Prompted(prompt, self._answer_ids(prompt_text, self.gold_text(example), example), -1)
        if example.answer not in self.task.labels:
            raise IA2Error(f"{example.where}: field 'answer' = {example.answer!r} is not a label of {self.task.name}")
        label = self.task.labels.index(example.answer)
        answer = self._answer_ids(prompt_text, self.answer_text(example.answer), example)
        if answer != self.label_ids[label]:
            raise IA2Error(f"{example.where}: label {example.answer!r} tokenises differently after this prompt")
        return Prompted(prompt, answer, label)


def _overflow(
    encoder: Encoder, example: Example, demos: Sequence[Example], demo_task: Task | None, length: int
) -> IA2Error:
    """The error for a prompt of `length` tokens over the context: it names the query when the query alone is too
    long, else the longest demonstration, since fewer demonstrations would then fit."""
    answer, context = encoder.task.max_new_tokens, encoder.max_length
    over = f"{length} tokens + {answer} answer tokens exceed the model's context of {context}"
    alone = len(encoder.tokens(encoder.text(example, [], demo_task)))
    if not demos or alone + answer > context:
        return IA2Error(f"{example.where}: prompt of {over}")
    shown = demo_task or encoder.task
    texts = [shown.question(d) + shown.render_answer(d.answer) for d in demos]
    sizes = [len(ids) for ids in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(demos)), key=sizes.__getitem__)
    return IA2Error(
        f"{demos[longest].where}: demonstrations too long: this one has {sizes[longest]} tokens, the "
        f"most of the {len(demos)} before {example.where}, whose prompt of {over} (the query alone has "
        f"{alone} tokens): use fewer demonstrations (--k-max)"
    )


def teacher_prompts(
    encoder: Encoder,
    split: Split,
    prompt: PromptConfig,
    n_train: int,
    unlabelled: bool,
    seed: int,
    demo_labels: str = "gold",
) -> tuple[list[list[int]], str]:
    """Token ids of the ICL prompts of the teacher's queries (`teacher_queries`), and the demo policy's name.

    Normally each training query gets k = min(k_max, N−1) leave-one-out demos (dev queries draw from the training
    set); in low-data mode query j gets permutation j mod K of k = min(k_max, N) labelled examples. With
    `demo_labels` "shuffled" (the placebo control) each prompt's demos keep their questions and order but carry
    their answers in a seeded random permutation.
    """
    rng, queries, examples = random.Random(f"demos-{seed}"), teacher_queries(split, unlabelled), encoder.task.examples

    def encode(i: int, demos: list[int]) -> list[int]:
        shown = [examples[d] for d in demos]
        if demo_labels == "shuffled":
            answers = [e.answer for e in shown]
            random.Random(f"placebo-{seed}-{i}").shuffle(answers)
            shown = [replace(e, answer=a) for e, a in zip(shown, answers, strict=True)]
        return encoder.prompt_ids(examples[i], shown)

    labels = ", labels shuffled" if demo_labels == "shuffled" else ""
    if not unlabelled:
        k = min(prompt.k_max, n_train - 1)
        prompts = [encode(i, draw_demos(split.train, k, rng, exclude=i)) for i in queries]
        return prompts, f"leave-one-out k={k}{labels}"
    k = min(prompt.k_max, n_train)
    orders = [draw_demos(split.train, k, rng) for _ in range(prompt.permutations)]
    prompts = [encode(i, orders[j % len(orders)]) for j, i in enumerate(queries)]
    return prompts, f"low-data k={k} permutations={prompt.permutations}{labels}"


def teacher_queries(split: Split, unlabelled: bool) -> list[int]:
    """The queries the ICL teacher answers: the N training examples, or the M unlabelled ones in low-data mode,
    then the dev examples."""
    return (split.unlabelled if unlabelled else split.train) + split.dev


def icl_demos(
    split: Split, pool: Sequence[int], policy: str, k: int, n_queries: int, seed: int, draw: int = 0
) -> list[list[int]]:
    """The ICL baseline's demonstrations for each of `n_queries` test queries: from the N training examples, one
    draw shared by every query (`shared`) or one per query (`per-query`), or, as in the reference code, from the
    pool outside the training and dev examples, one draw per query (`pool`); `draw` numbers a seed's draws."""
    rng = random.Random(f"icl-eval-{seed}" + (f"-draw{draw}" if draw else ""))
    shared = draw_demos(split.train, k, rng)
    outside = sorted(set(pool) - set(split.train + split.dev + split.unlabelled))
    source = {"shared": None, "per-query": split.train, "pool": outside}[policy]
    return [shared if source is None else draw_demos(source, k, rng) for _ in range(n_queries)]
