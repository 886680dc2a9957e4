"""Chat-templated prompts (instruct models): demonstrations as user/assistant turns, a clean answer boundary."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import small_run, toy_rows, write_jsonl
from ia2.commands import cli
from ia2.data.prompts import Encoder
from ia2.data.tasks import load_task
from ia2.errors import IA2Error
from ia2.model import loading

TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}Question: {{ m.content }}\n{% else %}Answer: {{ m.content }}"
    "\n\n{% endif %}{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)


@pytest.fixture
def chat_model_dir(tmp_path, llama_dir):
    folder = tmp_path / "chat-llama"
    shutil.copytree(llama_dir, folder)
    _, tok = loading.load(str(folder))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return folder


def test_chat_prompt_turns_and_answer_ids(chat_model_dir, toy_jsonl):
    _, tok = loading.load(str(chat_model_dir))
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
    _, tok = loading.load(str(llama_dir))
    with pytest.raises(IA2Error, match="has no chat template"):
        Encoder(load_task(f"jsonl:{toy_jsonl}"), tok, 512, chat=True)


def test_chat_run_end_to_end(tmp_path, chat_model_dir):
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    out = tmp_path / "out"
    assert cli.main(small_run(chat_model_dir, f"jsonl:{task}", out, "--chat", max_epochs=2)) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["ia2", "icl", "zero-shot"]
    assert json.loads((out / "results.json").read_text())["config"]["prompt"]["chat"] is True


def _label_probs(model, tok, text: str, answers: list[str], special: bool) -> list[float]:
    """Each answer's probability after `text` (its tokens' log-probabilities summed, renormalised over the answers),
    computed by hand: the answer's tokens are tokens(text + answer) minus tokens(text)."""
    prompt = tok(text, add_special_tokens=special)["input_ids"]
    scores = []
    for answer in answers:
        full = tok(text + answer, add_special_tokens=special)["input_ids"]
        assert full[: len(prompt)] == prompt
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), dim=-1)
        scores.append(sum(logp[i - 1, full[i]] for i in range(len(prompt), len(full))))
    return torch.softmax(torch.stack(scores), dim=0).tolist()


def test_a_chat_adapters_card_and_record_give_the_rendering_a_server_must_send(tmp_path, chat_model_dir):
    """A server that follows ia2.json's `serving` block (the chat template applied to one user message, no special
    tokens added, the label straight after the assistant header) gets the adapter's probabilities within 1e-5; the
    card shows the same worked example; the plain rendering (answer prefix + label) does not match."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    out = tmp_path / "adapter"
    argv = ["train", "--model", str(chat_model_dir), "--task", f"jsonl:{task}", "--chat", "--max-epochs", "2"]
    assert cli.main([*argv, "--on-divergence", "record", "--out", str(out)]) == 0
    record = json.loads((out / "ia2.json").read_text())
    served, spec = record["serving"], record["task"]
    assert served["chat"] and not served["add_special_tokens"] and served["answer_prefix"] == ""
    card = (out / "README.md").read_text()
    example = served["example"]
    assert f"prompt:   {json.dumps(example['prompt'])}" in card and "chat template" in card

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_model_dir), str(out)).eval()
    tok = AutoTokenizer.from_pretrained(chat_model_dir)

    def rendered(question: str) -> str:
        content = spec["instruction"] + spec["template"].format(question=question)
        return tok.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=served["add_generation_prompt"],
            chat_template=served["chat_template"],
        )

    assert rendered(example["question"]) == example["prompt"]
    assert tok(example["prompt"], add_special_tokens=False)["input_ids"] == example["prompt_ids"]
    questions = [r["question"] for r in toy_rows(5, seed=3)]
    inputs = write_jsonl(tmp_path / "new.jsonl", [{"question": q} for q in questions])
    assert cli.main(["predict", str(out), "--input", str(inputs), "--out", str(tmp_path / "p.jsonl")]) == 0
    predicted = [json.loads(line)["probs"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    labels = spec["labels"]
    gap_plain = 0.0
    for question, probs in zip(questions, predicted):
        answers = [example["answers"][label] for label in labels]
        served_probs = _label_probs(model, tok, rendered(question), answers, served["add_special_tokens"])
        assert served_probs == pytest.approx([probs[label] for label in labels], abs=1e-5)
        plain = spec["instruction"] + spec["template"].format(question=question)
        plain_probs = _label_probs(model, tok, plain, [spec["answer_prefix"] + label for label in labels], True)
        gap_plain = max(gap_plain, *(abs(a - probs[label]) for a, label in zip(plain_probs, labels)))
    assert gap_plain > 1e-3, "setup: the plain rendering gives other probabilities, so following it would be wrong"
