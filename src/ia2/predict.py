"""`ia2 predict`: a saved adapter applied to new inputs, rendered as its training run rendered them, one JSON line
per input; with `icl` K, its base model with K of the adapter's training examples as demonstrations instead, for
comparison. Inputs that carry answers are also scored: accuracy, ECE (both binnings), Brier, NLL, a reliability
diagram."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from peft import PeftModel

from . import models, parsers, plots
from .card import RECORD
from .errors import IA2Error
from .evaluate import Scores, generation_metrics, score, summarise
from .export import adapter_config
from .generation import generate_texts
from .paths import write_json, write_text
from .prompts import Encoder
from .targets import model_fingerprint
from .tasks import Example, Task
from .tasks.jsonl import read_jsonl


@dataclass(frozen=True)
class Predicted:
    """What `predict` wrote: the prediction lines, and the metrics when every input had an answer (else None)."""

    lines: list[dict]
    metrics: dict | None


def load_record(adapter: Path) -> dict:
    """A saved ia2 adapter's record (ia2.json), or one line saying why the folder is not one."""
    adapter_config(adapter)
    path = adapter / RECORD
    if not path.is_file():
        raise IA2Error(f"{adapter}: not an ia2 adapter (no {RECORD}; adapters saved by ia2 0.2 and later have one)")
    return json.loads(path.read_text())


def task_of(record: dict, examples: list[Example]) -> Task:
    """The adapter's task rendering over the inputs; an input's answer must be one of the adapter's labels."""
    spec = record["task"]
    labels = tuple(spec["labels"])
    for e in examples:
        if labels and e.answer and e.answer not in labels:
            raise IA2Error(f"{e.where}: field 'answer' = {e.answer!r} is not a label of the adapter {list(labels)}")
    return Task(
        name=spec["name"],
        examples=tuple(examples),
        labels=labels,
        template=spec["template"],
        answer_prefix=spec["answer_prefix"],
        separator=spec["separator"],
        instruction=spec["instruction"],
        max_new_tokens=spec["max_new_tokens"],
        parser=spec["parser"],
        stop=tuple(spec["stop"]),
    )


def predict(
    adapter: Path, inputs: Path, out: Path, icl: int = 0, batch_size: int = 8, base_model: str | None = None
) -> Predicted:
    """Predict every input of a JSONL file (`question`, optional `answer`) with a saved adapter, or its base model
    with `icl` demonstrations; write the lines to `out` and, when every input has an answer, the metrics beside it.
    `base_model` loads the base from elsewhere (a moved folder, a local copy of a hub model): its weights must be the
    ones the adapter was trained on."""
    record = load_record(adapter)
    examples = read_jsonl(inputs, answers=False)
    task = task_of(record, examples)
    demos = [Example(d["question"], d["answer"]) for d in record["train_examples"][:icl]]
    if icl > len(record["train_examples"]) or icl < 0:
        raise IA2Error(f"--icl {icl}: the adapter was trained on {len(record['train_examples'])} examples")
    named = base_model or record["base_model"]
    base, tokenizer = models.load(named)
    found = model_fingerprint(base)
    if found != record["base_fingerprint"]:
        raise IA2Error(
            f"{named}: not the base model {adapter} was trained on (weights "
            f"fingerprint {found}, the adapter's {record['base_fingerprint']})"
        )
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    encoder = Encoder(task, tokenizer, base.config.get_text_config().max_position_embeddings, record["chat"])
    prompts = [encoder.prompt_ids(e, demos) for e in examples]
    with model.disable_adapter() if icl else nullcontext():
        if task.generative:
            lines = _generated(model, tokenizer, prompts, task, batch_size)
            result = _generation_metrics(lines, examples, task)
        else:
            measured = score(model, prompts, encoder.label_ids, tokenizer.pad_token_id, None, batch_size, "predict")
            lines = _classified(measured, encoder, task)
            result = _label_metrics(measured, encoder, examples, out)
    write_text(out, "".join(json.dumps({"question": e.question, **line}) + "\n" for e, line in zip(examples, lines)))
    if result is not None:
        write_json(out.with_suffix(".metrics.json"), result)
    return Predicted(lines, result)


def _classified(measured: Scores, encoder: Encoder, task: Task) -> list[dict]:
    """Each input's label, every label's probability (renormalised over the labels), and the full-vocabulary
    probability of the top label's first token."""
    probs = measured.label_probs()
    top = probs.argmax(axis=1)
    return [
        {
            "label": task.labels[t],
            "probs": dict(zip(task.labels, map(float, p))),
            "vocab_prob": float(measured.vocab_label_prob[i, t]),
        }
        for i, (t, p) in enumerate(zip(top, probs))
    ]


def _label_metrics(measured: Scores, encoder: Encoder, examples: list[Example], out: Path) -> dict | None:
    """The run's metrics on inputs that all have answers (None otherwise), with a reliability diagram."""
    if not all(e.answer for e in examples):
        return None
    gold = np.array([encoder.task.labels.index(e.answer) for e in examples])
    result = summarise(measured, gold, [ids[0] for ids in encoder.label_ids])
    probs = measured.label_probs()
    plots.plot_reliability(
        {"predict": (probs.max(axis=1), (probs.argmax(axis=1) == gold).astype(int))},
        out.with_suffix(".reliability.png"),
    )
    return result


def _generated(model, tokenizer, prompts: list[list[int]], task: Task, batch_size: int) -> list[dict]:
    """Each input's generation, cut by the task's stop rule, and its parsed answer (None when it does not parse)."""
    texts = generate_texts(model, tokenizer, prompts, task, batch_size, "predict")
    return [{"generation": t, "parsed": parsers.extract(task.parser, t)} for t in texts]


def _generation_metrics(lines: list[dict], examples: list[Example], task: Task) -> dict | None:
    """Accuracy and parse-failure rate when every input has an answer (None otherwise)."""
    if not all(e.answer for e in examples):
        return None
    return generation_metrics([line["generation"] for line in lines], [e.answer for e in examples], task.parser)
