"""`ia2 predict`: a saved adapter applied to new inputs, rendered as its training run rendered them, one JSON line
per input; with `icl` K, its base model with K of the adapter's training examples as demonstrations instead, for
comparison. Inputs that carry answers are also scored: accuracy, ECE (both binnings), Brier, NLL, a reliability
diagram."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ia2.data import parsers
from ia2.data.tasks import Example, Task, load_task
from ia2.data.tasks.jsonl import read_jsonl
from ia2.errors import IA2Error
from ia2.paths import check_output, write_json, write_text
from ia2.run import lock, saved
from ia2.run.card import rendering

if TYPE_CHECKING:
    from ia2.data.prompts import Encoder
    from ia2.evaluation.scoring import Scores


@dataclass(frozen=True)
class Predicted:
    """What `predict` wrote: the prediction lines, and the metrics when every input had an answer (else None)."""

    lines: list[dict]
    metrics: dict | None


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
        label_score=spec.get("label_score", "sum"),
        parser=spec["parser"],
        stop=tuple(spec["stop"]),
    )


def predict(
    source: str | Path,
    inputs: Path,
    out: Path,
    icl: int = 0,
    batch_size: int = 8,
    base_model: str | None = None,
    task_spec: str | None = None,
) -> Predicted:
    """Predict every input of a JSONL file (`question`, optional `answer`) and write the lines to `out` and, when
    every input has an answer, the metrics beside it. `source` is a saved adapter folder, or, with `task_spec` (a
    task as `--task` names it: its rendering, labels and, for `icl`, demonstrations), a model with no adapter (hub
    id, embedded name or model folder). `icl` K puts K training examples before each input, the adapter disabled.
    `base_model` loads an adapter's base from elsewhere; its weights must be the ones the adapter was trained on."""
    for target in outputs(out):
        check_output(target, inputs=[inputs])
    examples = read_jsonl(inputs, answers=False)
    record = saved.load_record(Path(source)) if task_spec is None else task_record(str(source), task_spec)
    task = task_of(record, examples)
    if icl < 0:
        raise IA2Error(f"--icl {icl}: the number of demonstrations must be at least 0")
    if icl > len(record["train_examples"]):
        raise IA2Error(f"--icl {icl}: {len(record['train_examples'])} training examples to draw demonstrations from")
    demos = [Example(d["question"], d["answer"]) for d in record["train_examples"][:icl]]
    from peft import PeftModel  # torch, transformers and peft load once the inputs are known to be good

    from ia2.data.prompts import Encoder
    from ia2.evaluation.scoring import score
    from ia2.model import loading

    with lock.holding([lock.beside(out)]):
        if task_spec is None:
            model, tokenizer = saved.on_base(Path(source), record, base_model)
        else:
            model, tokenizer = loading.load(str(source))
        encoder = Encoder(task, tokenizer, model.config.get_text_config().max_position_embeddings, record["chat"])
        prompts = [encoder.prompt_ids(e, demos) for e in examples]
        with model.disable_adapter() if icl and isinstance(model, PeftModel) else nullcontext():
            if task.generative:
                lines = _generated(model, tokenizer, prompts, task, batch_size)
                result = _generation_metrics(lines, examples, task)
            else:
                measured = score(
                    model,
                    prompts,
                    encoder.label_ids,
                    tokenizer.pad_token_id,
                    None,
                    batch_size,
                    "predict",
                    task.label_score,
                )
                lines = _classified(measured, encoder, task)
                result = _label_metrics(measured, encoder, examples, out)
        write_text(
            out, "".join(json.dumps({"question": e.question, **line}) + "\n" for e, line in zip(examples, lines))
        )
        if result is not None:
            write_json(outputs(out)[1], result)
        else:
            for stale in outputs(out)[1:]:
                stale.unlink(missing_ok=True)
    return Predicted(lines, result)


def outputs(out: Path) -> tuple[Path, Path, Path]:
    """The files `predict` may write: the prediction lines, and beside them the metrics and reliability diagram."""
    return out, out.with_suffix(".metrics.json"), out.with_suffix(".reliability.png")


def task_record(model: str, task_spec: str) -> dict:
    """For a model alone, a record built from a task: its rendering, and its examples outside the test split as the
    demonstrations `icl` draws from."""
    if (Path(model) / "adapter_config.json").is_file():
        raise IA2Error(f"{model} is an adapter: predict with it without --task (its record renders the prompts)")
    task = load_task(task_spec)
    train = [{"question": e.question, "answer": e.answer} for e in task.examples if e.split != "test"]
    return {"task": rendering(task), "chat": False, "train_examples": train}


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
    import numpy as np

    from ia2.evaluation.scoring import reliability, summarise
    from ia2.reporting import plots

    gold = np.array([encoder.task.labels.index(e.answer) for e in examples])
    result = summarise(measured, gold, encoder.label_first())
    seen = reliability(measured, gold)
    plots.plot_reliability({"predict": (np.array(seen["confidence"]), np.array(seen["correct"]))}, outputs(out)[2])
    return result


def _generated(model, tokenizer, prompts: list[list[int]], task: Task, batch_size: int) -> list[dict]:
    """Each input's generation, cut by the task's stop rule, and its parsed answer (None when it does not parse)."""
    from ia2.model.generation import generate_texts

    texts = generate_texts(model, tokenizer, prompts, task, batch_size, "predict")
    return [{"generation": t, "parsed": parsers.extract(task.parser, t)} for t in texts]


def _generation_metrics(lines: list[dict], examples: list[Example], task: Task) -> dict | None:
    """Accuracy and parse-failure rate when every input has an answer (None otherwise)."""
    if not all(e.answer for e in examples):
        return None
    from ia2.evaluation.scoring import generation_metrics

    return generation_metrics([line["generation"] for line in lines], [e.answer for e in examples], task.parser)
