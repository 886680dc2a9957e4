"""The dataset shapes `IA2Trainer` reads, made into ia2's stage data (training and dev items per label source):
`prompt`/`completion` rows with a `demonstrations` column (prompt–completion pairs: the teacher's context),
conversational `messages` whose earlier turns are the demonstrations, and ia2's own `question`/`answer` rows, whose
teacher prompts ia2 draws from the other training rows as `ia2 train` does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from ia2 import config
from ia2.data.prompts import Encoder
from ia2.data.splits import Split
from ia2.data.tasks import Example, Task
from ia2.errors import IA2Error
from ia2.model.handle import ModelHandle
from ia2.registry import METHODS
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.trainer.arguments import IA2Config
from ia2.training.lanes import Item
from ia2.training.methods import needs_distribution
from ia2.training.stages import StageData, stage_data

SHAPES = {
    "prompt-completion": ("prompt", "completion"),
    "messages": ("messages",),
    "question-answer": ("question", "answer"),
}


@dataclass(frozen=True)
class Row:
    """One example as token ids: the student's prompt (no demonstrations), the gold completion, the teacher's prompt
    (demonstrations, then the same query) and where it came from, for error messages."""

    prompt: list[int]
    completion: list[int]
    teacher_prompt: list[int]
    where: str


def shape(columns: Sequence[str], name: str) -> str:
    """Which shape a dataset's columns are, or one line naming the columns it lacks."""
    for found, needed in SHAPES.items():
        if all(c in columns for c in needed):
            return found
    wanted = "; ".join(" and ".join(needed) for needed in SHAPES.values())
    raise IA2Error(f"{name}: columns {sorted(columns)}: expected one of: {wanted}")


def build(
    train: Sequence[Mapping[str, Any]],
    dev: Sequence[Mapping[str, Any]],
    handle: ModelHandle,
    args: IA2Config,
    kind: str,
) -> StageData:
    """Stage data for `args.method` from training and dev rows of one shape, the teacher being the handle's model with
    its adapter disabled, in eval mode (targets from ia2's collector, cached under the rows' hash)."""
    training = handle.model.training
    handle.model.eval()
    try:
        if kind == "question-answer":
            return _from_questions(train, dev, handle, args)
        rows = [to_row(r, f"train row {i}", handle.tokenizer, args, kind) for i, r in enumerate(train)]
        rows += [to_row(r, f"eval row {i}", handle.tokenizer, args, kind) for i, r in enumerate(dev)]
        return _from_rows(rows, len(train), handle, args, "" if kind == "messages" else args.demo_separator)
    finally:
        handle.model.train(training)


def to_row(data: Mapping[str, Any], where: str, tokenizer: PreTrainedTokenizerBase, args: IA2Config, kind: str) -> Row:
    """One prompt/completion or conversational row as token ids."""
    if kind == "messages":
        return _conversation(data["messages"], where, tokenizer)
    demos = data.get("demonstrations") or []
    for j, demo in enumerate(demos):
        if not isinstance(demo, Mapping) or not {"prompt", "completion"} <= set(demo):
            raise IA2Error(f"{where}: demonstrations[{j}]: expected a mapping with prompt and completion")
    context = "".join(d["prompt"] + d["completion"] + args.demo_separator for d in demos)
    prompt = tokenizer(data["prompt"]).input_ids
    completion = _after(prompt, tokenizer(data["prompt"] + data["completion"]).input_ids, where)
    return Row(prompt, completion, tokenizer(context + data["prompt"]).input_ids, where)


def _after(prompt: list[int], whole: list[int], where: str) -> list[int]:
    """The completion's tokens as the model reads them after the prompt (tokenized together, so a tokenizer that
    merges across the boundary or marks word starts is honoured); one line when the prompt's tokens change."""
    if whole[: len(prompt)] != prompt or len(whole) == len(prompt):
        raise IA2Error(f"{where}: the completion is empty, or changes how the prompt before it is tokenized")
    return whole[len(prompt) :]


def _conversation(messages: Sequence[Mapping[str, str]], where: str, tokenizer: PreTrainedTokenizerBase) -> Row:
    """A conversation whose last turn is the completion (with its end-of-turn tokens) and whose earlier user/assistant
    turns are demonstrations: the student sees the system turn (if any) and the last user turn only."""
    if not tokenizer.chat_template:
        raise IA2Error(f"{where}: messages need a tokenizer with a chat template; {tokenizer.name_or_path!r} has none")
    if len(messages) < 2 or messages[-1].get("role") != "assistant" or messages[-2].get("role") != "user":
        raise IA2Error(f"{where}: field 'messages' must end with a user turn and the assistant's answer")
    system = [m for m in messages[:1] if m.get("role") == "system"]
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731 (the template has them)
    render = lambda turns, ask: tokenizer.apply_chat_template(turns, add_generation_prompt=ask, tokenize=False)  # noqa: E731
    student = ids(render([*system, messages[-2]], True))
    completion = _after(student, ids(render([*system, *messages[-2:]], False)), where)
    return Row(student, completion, ids(render(list(messages[:-1]), True)), where)


def _check_context(rows: Sequence[Row], answer: int, handle: ModelHandle) -> None:
    """Refuse, naming the row, a teacher prompt that leaves no room for its answer in the model's context."""
    context = handle.model.config.get_text_config().max_position_embeddings
    for row in rows:
        if len(row.teacher_prompt) + answer > context:
            raise IA2Error(
                f"{row.where}: the demonstrations and prompt take {len(row.teacher_prompt)} tokens, and the answer "
                f"{answer} more: over the model's context of {context}; give fewer or shorter demonstrations"
            )


def _from_rows(rows: Sequence[Row], n_train: int, handle: ModelHandle, args: IA2Config, stop: str) -> StageData:
    """Items per label source: the gold completions and, when a stage trains on them, the ICL teacher's answers
    (cut at `stop`)."""
    gold = [Item(r.prompt, r.completion) for r in rows]
    items = {"gold": (gold[:n_train], gold[n_train:])}
    sources = {stage.labels for stage in METHODS[args.method].stages}
    if "placebo" in sources:
        raise IA2Error(f"IA2Config.method {args.method!r}: the placebo teacher needs question/answer rows")
    if "icl" not in sources:
        return StageData(items, [])
    if all(r.teacher_prompt == r.prompt for r in rows):
        raise IA2Error(f"IA2Config.method {args.method!r} trains on the ICL teacher: give demonstrations")
    answer = args.max_new_tokens or max(len(r.completion) for r in rows)
    _check_context(rows, answer, handle)
    teacher = _teacher(rows, handle, args, CollectSettings(answer, stop, args.per_device_eval_batch_size, "teacher"))
    online = args.teacher_mode == "online"
    ids, logp = (_or_none(x, len(rows)) for x in (teacher.top_ids, teacher.top_logp))
    icl = [
        Item(r.prompt, tokens, acts, top_ids, top_logp, r.teacher_prompt if online else None)
        for r, tokens, acts, top_ids, top_logp in zip(rows, teacher.tokens, teacher.acts, ids, logp)
    ]
    return StageData(items | {"icl": (icl[:n_train], icl[n_train:])}, [], {"icl": teacher.key})


def _or_none(values: Sequence | None, n: int) -> Sequence:
    return values if values is not None else [None] * n


def _teacher(rows: Sequence[Row], handle: ModelHandle, args: IA2Config, settings: CollectSettings) -> targets.Targets:
    """The teacher's greedy answers to the demonstration prompts with their activations (and its next-token
    distributions when a loss needs them), cached by the rows' content and the base model."""
    settings = replace(settings, distribution=0 if needs_distribution([args.method]) else None)
    digest = hashlib.sha256(json.dumps([[r.prompt, r.teacher_prompt] for r in rows]).encode()).hexdigest()[:16]
    fields = {"model": handle.fingerprint, "rows": digest, "source": "ia2.trainer"}
    tap = handle.tap if args.teacher_mode == "cached" else None
    with handle.model.disable_adapter():
        return targets.cached_collect(
            handle.model,
            tap,
            handle.tokenizer,
            [r.teacher_prompt for r in rows],
            fields,
            settings,
            dtype=args.target_dtype,
        )


def _from_questions(
    train: Sequence[Mapping[str, Any]], dev: Sequence[Mapping[str, Any]], handle: ModelHandle, args: IA2Config
) -> StageData:
    """ia2's own rows: a task of the training rows then the dev rows, leave-one-out demonstrations from the training
    rows for every teacher query, as `ia2 train` draws them for its seed."""
    examples = [_example(r, f"train row {i}") for i, r in enumerate(train)]
    examples += [_example(r, f"eval row {i}") for i, r in enumerate(dev)]
    labels = tuple(sorted({e.answer for e in examples[: len(train)]}))
    task = Task(name="dataset", examples=tuple(examples), labels=labels)
    context = handle.model.config.get_text_config().max_position_embeddings
    cfg = config.make(
        handle.model.name_or_path,
        task.name,
        methods=[args.method],
        n_train=len(train),
        k_max=args.k_max,
        site=args.site,
        layers=args.layers,
        teacher_mode=args.teacher_mode,
        target_dtype=args.target_dtype,
        batch_size=args.per_device_eval_batch_size,
    )
    setup = _Setup(replace(cfg, train=args.train_config()), task, Encoder(task, handle.tokenizer, context))
    split = Split(list(range(len(train))), list(range(len(train), len(examples))), [])
    return stage_data(setup, handle, split, args.seed, [args.method])


@dataclass(frozen=True)
class _Setup:
    """What `stage_data` reads of a run's set-up, for rows given as datasets."""

    cfg: config.RunConfig
    task: Task
    encoder: Encoder


def _example(data: Mapping[str, Any], where: str) -> Example:
    """A question/answer row, its fields checked."""
    for name in ("question", "answer"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise IA2Error(f"{where}: field {name!r} must be a non-empty string")
    return Example(data["question"], data["answer"], where=where)
