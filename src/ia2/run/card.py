"""A saved adapter's model card (README.md, PEFT's convention): what it was trained from and on, how to prompt it,
and what it measured."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCardData

from ia2.config import RunConfig, key
from ia2.data.tasks import Example, Task
from ia2.registry import METHODS

if TYPE_CHECKING:
    from ia2.data.prompts import Encoder
    from ia2.data.splits import Split
    from ia2.run.context import RunSetup

RECORD = "ia2.json"
# The IA2 paper on arXiv: the hub links a card tagged `arxiv:<id>` to the paper's page.
PAPER = "2509.22621"
METRICS = ("accuracy", "ece", "ece_equal_mass", "brier", "nll", "asim", "parse_failure_rate")


def divergences(logs: Sequence[dict]) -> str | None:
    """The diverged stages of a method's stage logs in one line (`stage: why; ...`), or None when none diverged."""
    found = [f"{log['stage']}: {log['diverged']}" for log in logs if log.get("diverged")]
    return "; ".join(found) or None


def model_card(
    cfg: RunConfig, task: Task, method: str, seed: int, rows: list[dict], logs: list[dict], served: dict
) -> str:
    """The card's markdown, with YAML front matter naming the base model as the user named it; `served` is the
    record's `serving` block (how a server renders a prompt, with a worked example)."""
    labels = ", ".join(f"`{label}`" for label in task.labels) or f"generated, parsed by `{task.parser}`"
    metrics = "\n".join(f"| {r['eval_task']} | " + " | ".join(_number(r.get(m)) for m in METRICS) + " |" for r in rows)
    stages = ", ".join(
        f"{log['stage']} ({log['steps']} steps, best dev loss {log['best_dev_loss']:.4g})" for log in logs
    )
    diverged = divergences(logs)
    warning = f"\n**Diverged, not to be used as trained**: {diverged}.\n" if diverged else ""
    return f"""---
{metadata(cfg, task, method).to_yaml()}
---

# {METHODS[method].display} adapter for {cfg.model}

Trained by ia2 with method `{method}` on task `{task.name}`: N = {cfg.data.n_train} labelled examples, seed {seed}.
Stages: {stages}.
{warning}
## Prompt

{_prompt_section(task, served)}
Labels: {labels}.

## {"Dev" if all(r.get("split") == "dev" for r in rows) else "Test"} metrics

| evaluation set | {" | ".join(METRICS)} |
|---{"|---" * len(METRICS)}|
{metrics}

## Training settings

```json
{
        json.dumps(
            {
                "train": asdict(cfg.train),
                "adapter": cfg.adapter,
                "teacher": asdict(cfg.teacher),
                "prompt": asdict(cfg.prompt),
            },
            indent=2,
        )
    }
```

Load with `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), PATH)`, where BASE is the base
model above (for an ia2 embedded name, the folder `ia2.model.loading.resolve(name)` returns).
"""


def metadata(cfg: RunConfig, task: Task, method: str) -> ModelCardData:
    """A run's adapter card metadata (`hub_metadata`), with the dataset when the task was read from the hub (a local
    or packaged task has no hub id to link to)."""
    hub = task.source.removeprefix("hub:").partition("@")[0] if task.source.startswith("hub:") else None
    return hub_metadata(cfg.model, method, [hub] if hub else None)


def hub_metadata(
    base_model: str, method: str, datasets: list[str] | None = None, tags: Sequence[str] = (), **more: Any
) -> ModelCardData:
    """The hub's metadata of an ia2 adapter: the base model as the user named it, `library_name: peft`, tags naming
    ia2, the method and the paper (then `tags`), the datasets and any other card field given (`more`)."""
    tags = list(dict.fromkeys(["ia2", method, f"arxiv:{PAPER}", *tags]))
    return ModelCardData(base_model=base_model, library_name="peft", tags=tags, datasets=datasets, **more)


def _prompt_section(task: Task, served: dict) -> str:
    """How to render an input, as the training run rendered it, and a worked example (strings JSON-quoted, so every
    space, newline and special token is shown)."""
    example = served["example"]
    if served["chat"]:
        how = (
            "Inputs are rendered as the training run rendered them, without demonstrations, through the base "
            "model's chat template (`--chat`; `serving.chat_template` in `ia2.json`): one user message whose content "
            "is instruction + template with the question filled in, rendered by\n"
            "`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)` and tokenised "
            "without adding special tokens (the template spells them). The label follows the assistant header "
            "directly, with no answer prefix:"
        )
        answer = "label"
    else:
        how = (
            "Inputs are rendered as the training run rendered them, without demonstrations, as plain text "
            "(instruction + template with the question filled in), tokenised with the tokenizer's special tokens; "
            "the label follows the answer prefix:"
        )
        answer = f"{json.dumps(task.answer_prefix)} + label"
    return f"""{how}

    instruction: {json.dumps(task.instruction)}
    template:    {json.dumps(task.template)}
    answer:      {answer}

Worked example (the first training example): the exact text sent, then each label's continuation:

    question: {json.dumps(example["question"])}
    prompt:   {json.dumps(example["prompt"])}
    answers:  {json.dumps(example["answers"])}
"""


def serving(encoder: Encoder, example: Example) -> dict:
    """What a server must send to get the adapter's probabilities: plain text or the chat template (the template
    itself, since a server's own may differ), whether the tokenizer adds special tokens, the text between prompt
    and label, and a worked example (its prompt text and token ids, and each label's continuation)."""
    served = {
        "chat": encoder.chat,
        "add_special_tokens": not encoder.chat,
        "answer_prefix": encoder.answer_text(""),
        "example": {
            "question": example.question,
            "prompt": encoder.text(example, []),
            "prompt_ids": encoder.prompt_ids(example),
            "answers": {label: encoder.answer_text(label) for label in encoder.task.labels},
        },
    }
    if encoder.chat:
        served["chat_template"] = encoder.tokenizer.chat_template
        served["add_generation_prompt"] = True
    return served


def adapter_record(
    cfg: RunConfig,
    task: Task,
    method: str,
    seed: int,
    trained_on: Sequence[Example],
    fingerprint: str,
    teacher_key: str | None,
) -> dict:
    """What applying the adapter to new inputs needs, machine-readable: the base model, how prompts are rendered,
    the label words or answer parser, the chat setting, which run made it (method, seed, config key), and the
    labelled examples it was trained on (demonstrations for an ICL comparison); `fingerprint` identifies the base
    model's weights wherever its folder is, `teacher_key` the cached teacher targets it was trained on."""
    return {
        "base_model": cfg.model,
        "base_fingerprint": fingerprint,
        "dtype": cfg.runtime.dtype,
        "method": method,
        "seed": seed,
        "config_key": key(cfg),
        "teacher_targets": teacher_key,
        "task": rendering(task),
        "chat": cfg.prompt.chat,
        "train_examples": [{"question": e.question, "answer": e.answer} for e in trained_on],
    }


def rendering(task: Task) -> dict:
    """How a task's prompts and answers are rendered and scored, as its record keeps it."""
    names = (
        "template",
        "instruction",
        "answer_prefix",
        "separator",
        "labels",
        "label_score",
        "parser",
        "stop",
        "max_new_tokens",
    )
    return {"name": task.name, **{name: getattr(task, name) for name in names}}


def adapter_files(
    setup: RunSetup,
    fingerprint: str,
    method: str,
    seed: int,
    rows: list[dict],
    logs: list[dict],
    split: Split,
    teacher_key: str | None,
) -> dict[str, str]:
    """The files saved beside an adapter: its model card (README.md) and its record (ia2.json); `fingerprint` names
    the base model it was trained on."""
    cfg, task = setup.cfg, setup.task
    trained_on = [task.examples[i] for i in split.train]
    record = adapter_record(cfg, task, method, seed, trained_on, fingerprint, teacher_key)
    record["diverged"] = divergences(logs)
    record["serving"] = serving(setup.encoder, trained_on[0])
    return {
        "README.md": model_card(cfg, task, method, seed, rows, logs, record["serving"]),
        RECORD: json.dumps(record, indent=2) + "\n",
    }


def _number(value: object) -> str:
    return "–" if value is None else f"{value:.3f}"
