"""Chat-templated prompts (instruct models): demonstrations as user/assistant turns, a clean answer boundary."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import small_run, toy_rows, write_jsonl
from ia2 import cli, models
from ia2.errors import IA2Error
from ia2.prompts import Encoder
from ia2.tasks import load_task

TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}Question: {{ m.content }}\n{% else %}Answer: {{ m.content }}"
    "\n\n{% endif %}{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)


@pytest.fixture
def chat_model_dir(tmp_path, llama_dir):
    folder = tmp_path / "chat-llama"
    shutil.copytree(llama_dir, folder)
    _, tok = models.load(str(folder))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return folder


def test_chat_prompt_turns_and_answer_ids(chat_model_dir, toy_jsonl):
    _, tok = models.load(str(chat_model_dir))
    task = load_task(f"jsonl:{toy_jsonl}")
    encoder = Encoder(task, tok, 512, chat=True)
    q, d = task.examples[0], task.examples[1]
    text = encoder.text(q, [d])
    # the user turn carries the task's own rendering of the question (its template's framing and cue)
    assert text == f"Question: {task.question(d)}\nAnswer: {d.answer}\n\nQuestion: {task.question(q)}\nAnswer:"
    prompted = encoder.encode(q, [d])
    assert prompted.prompt == tok(text, add_special_tokens=False)["input_ids"], "the template spells its own specials"
    assert tok.decode(prompted.answer) == q.answer, "the answer follows the assistant header directly"
    assert [tok.decode(ids) for ids in encoder.label_ids] == list(task.labels)


def test_chat_needs_a_template(llama_dir, toy_jsonl):
    _, tok = models.load(str(llama_dir))
    with pytest.raises(IA2Error, match="has no chat template"):
        Encoder(load_task(f"jsonl:{toy_jsonl}"), tok, 512, chat=True)


def test_chat_run_end_to_end(tmp_path, chat_model_dir):
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    out = tmp_path / "out"
    assert cli.main(small_run(chat_model_dir, f"jsonl:{task}", out, "--chat", max_epochs=2)) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["ia2", "icl", "zero-shot"]
    assert json.loads((out / "results.json").read_text())["config"]["prompt"]["chat"] is True
