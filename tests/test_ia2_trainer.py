"""IA2Trainer: ia2's stages inside a transformers Trainer, on the tiny models: it trains the adapter `ia2 train`
trains, reads the ecosystem's dataset shapes, and refuses bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModel, EarlyStoppingCallback

from conftest import toy_rows, write_jsonl
from ia2 import config
from ia2.commands import train as ia2_train
from ia2.data.splits import draw_split
from ia2.errors import IA2Error
from ia2.model import adapters, loading
from ia2.teacher.targets import model_fingerprint
from ia2.trainer import IA2Config, IA2Trainer
from ia2.trainer.examples import to_row


def _args(tmp_path, **settings) -> IA2Config:
    quiet = dict(report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
    return IA2Config(output_dir=str(tmp_path / "trainer"), **{**quiet, **settings})


@pytest.mark.parametrize("method", ["ia2", "ia2-sft"])
def test_the_trainer_trains_the_adapter_ia2_train_trains(llama_dir, tmp_path, method):
    """Same rows, split, seed, batch, learning rate and steps: the adapter IA2Trainer leaves equals the one `ia2 train`
    saves (to 1e-6; both run Adam, as AdamW without weight decay here, at a constant rate, no clipping)."""
    rows = toy_rows(15)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = config.make(
        str(llama_dir), f"jsonl:{path}", methods=[method], seeds=[0], max_steps=3, eval_every=100, restore_best=False
    )
    ia2_train.train(cfg, tmp_path / "ia2")
    split = draw_split([], list(range(len(rows))), ia2_train.sized(cfg).data, 0)
    model, tok = loading.load(str(llama_dir))
    peft = adapters.fresh(model, cfg.adapter, 0)
    args = _args(tmp_path, method=method, max_steps=3, k_max=cfg.prompt.k_max, seed=0)
    train, dev = [rows[i] for i in split.train], [rows[i] for i in split.dev]
    IA2Trainer(peft, args, train_dataset=train, eval_dataset=dev, processing_class=tok).train()
    want = load_file(tmp_path / "ia2" / "adapter_model.safetensors")
    got = get_peft_model_state_dict(peft)
    assert sorted(want) == sorted(got)
    moved = max((want[k] - adapters_start(llama_dir, cfg)[k]).abs().max().item() for k in want)
    assert moved > 1e-4, "the adapters trained"
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-6


def adapters_start(llama_dir, cfg) -> dict[str, torch.Tensor]:
    """The fresh adapter both paths start from."""
    model, _ = loading.load(str(llama_dir))
    return get_peft_model_state_dict(adapters.fresh(model, cfg.adapter, 0))


def _with_demos(rows: list[dict], k: int = 3) -> list[dict]:
    """prompt/completion rows, each with the k rows after it as demonstrations."""
    as_pair = lambda r: {"prompt": f"Question: {r['question']}\nAnswer:", "completion": f" {r['answer']}"}  # noqa: E731
    return [
        {**as_pair(r), "demonstrations": [as_pair(rows[(i + j) % len(rows)]) for j in range(1, k + 1)]}
        for i, r in enumerate(rows)
    ]


def test_prompt_completion_rows_with_demonstrations_train_ia2_and_its_dev_loss_falls(llama_dir, tmp_path):
    """A `datasets.Dataset` of prompt/completion rows: the teacher answers each prompt after its demonstrations, the
    student sees the prompt alone, and the IA2 dev loss the Trainer logs falls."""
    rows = _with_demos(toy_rows(24))
    model, tok = loading.load(str(llama_dir))
    args = _args(tmp_path, method="ia2", max_steps=12, eval_strategy="steps", eval_steps=4, learning_rate=3e-3)
    train, dev = Dataset.from_list(rows[:16]), Dataset.from_list(rows[16:])
    trainer = IA2Trainer(adapters.fresh(model, "lora", 0), args, train, dev, processing_class=tok)
    trainer.train()
    (first, *_), (student, *_) = trainer.stage_data.items["icl"][0], trainer.stage_data.items["gold"][0]
    assert first.prompt == tok(rows[0]["prompt"]).input_ids == student.prompt
    assert first.acts.shape[:2] == (model.config.num_hidden_layers, len(first.answer))
    losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_conversations_take_their_earlier_turns_as_the_teachers_demonstrations(llama_dir, tmp_path):
    """The last user turn alone is the student's prompt; the teacher reads the whole conversation before it."""
    model, tok = loading.load(str(llama_dir))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    rows = toy_rows(12)

    def turns(r: dict) -> list[dict]:
        return [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]

    data = [{"messages": turns(rows[(i + 1) % 12]) + turns(rows[(i + 2) % 12]) + turns(r)} for i, r in enumerate(rows)]
    args = _args(tmp_path, method="ia2", max_steps=2)
    trainer = IA2Trainer(adapters.fresh(model, "lora", 0), args, data[:8], data[8:], processing_class=tok)
    trainer.train()
    item = trainer.stage_data.items["icl"][0][0]
    ids = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    assert item.prompt == ids(f"user: {rows[0]['question']}\nassistant:")
    whole = to_row(data[0], "row 0", tok, args, "messages").teacher_prompt
    assert whole == ids("".join(f"user: {r['question']}\nassistant: {r['answer']}\n" for r in rows[1:3])) + item.prompt


def test_early_stopping_and_the_best_state_are_the_trainers_own(llama_dir, tmp_path):
    """EarlyStoppingCallback stops on the dev loss and load_best_model_at_end leaves the best checkpoint's adapter."""
    model, tok = loading.load(str(llama_dir))
    rows = toy_rows(18)
    peft = adapters.fresh(model, "lora", 0)
    args = _args(
        tmp_path,
        method="sft",
        max_steps=40,
        learning_rate=0.05,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    trainer = IA2Trainer(
        peft,
        args,
        rows[:12],
        rows[12:],
        processing_class=tok,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    trainer.train()
    losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert trainer.state.global_step < 40 and trainer.state.best_metric == min(losses)
    best = load_file(f"{trainer.state.best_model_checkpoint}/adapter_model.safetensors")
    got = get_peft_model_state_dict(peft)
    assert all(torch.equal(best[k], got[k]) for k in best)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("columns", r"^train_dataset: columns \['text'\]: expected one of: prompt and completion; messages; question"),
        ("method", r"^IA2Config.method 'icl': expected a trained method, one of sft, sft-icl, "),
        ("model", r"^IA2Trainer: model must be a PEFT model \(peft.get_peft_model\), not LlamaForCausalLM$"),
        ("demos", r"^train row 0: the demonstrations and prompt take \d+ tokens, and the answer \d+ more: over the "),
        ("no demos", r"^IA2Config.method 'ia2' trains on the ICL teacher: give demonstrations$"),
        ("optimizer", r"^IA2Trainer: each stage makes its own optimizer: set optim and learning_rate in IA2Config$"),
    ],
)
def test_bad_input_is_one_line(llama_dir, short_context_dir, tmp_path, case, needle):
    model, tok = loading.load(str(short_context_dir if case == "demos" else llama_dir))
    rows = _with_demos(toy_rows(8), k=6 if case == "demos" else 2)
    if case == "no demos":
        rows = [{k: v for k, v in r.items() if k != "demonstrations"} for r in rows]
    with pytest.raises(IA2Error, match=needle) as caught:
        args = _args(tmp_path, method="icl" if case == "method" else "ia2", max_steps=1)
        data = [{"text": "x"}] if case == "columns" else rows
        student = model if case == "model" else adapters.fresh(model, "lora", 0)
        optimizers = (torch.optim.SGD(model.parameters(), lr=0.1), None) if case == "optimizer" else (None, None)
        IA2Trainer(student, args, data, processing_class=tok, optimizers=optimizers).train()
    assert "\n" not in str(caught.value)


LAUNCHED = """
import sys
import torch
from peft import get_peft_model_state_dict
from ia2.model import adapters, loading
from ia2.trainer import IA2Config, IA2Trainer

folder, out, rows, batch = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read()), int(sys.argv[4])
model, tok = loading.load(folder)
peft = adapters.fresh(model, "lora", 0)
args = IA2Config(output_dir=out, method="ia2-sft", max_steps=3, report_to="none", use_cpu=True, save_strategy="no",
                 disable_tqdm=True, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=batch)
trainer = IA2Trainer(peft, args, rows[:12], rows[12:], processing_class=tok)
trainer.train()
torch.save(get_peft_model_state_dict(peft), f"{out}/state{trainer.args.process_index}.pt")
"""


def test_two_cpu_processes_under_accelerate_launch_train_as_one_with_their_batches_together(llama_dir, tmp_path):
    """`accelerate launch` with two gloo processes of batch 2: both hold the same adapter, the one a single process of
    batch 4 trains (each global batch is the two processes' batches, DDP averaging their gradients)."""
    script, data = tmp_path / "launched.py", tmp_path / "rows.json"
    script.write_text("import json\n" + LAUNCHED)
    data.write_text(json.dumps(toy_rows(16)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    for out, batch, prefix in ((tmp_path / "two", 2, launch), (tmp_path / "one", 4, [sys.executable])):
        out.mkdir()
        done = subprocess.run(
            [*prefix, str(script), str(llama_dir), str(out), str(data), str(batch)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one, *two = (torch.load(p) for p in (tmp_path / "one" / "state0.pt", *sorted((tmp_path / "two").glob("state*.pt"))))
    assert len(two) == 2 and all(torch.equal(two[0][k], two[1][k]) for k in one), "the processes agree"
    assert max((two[0][k] - one[k]).abs().max().item() for k in one) < 1e-6


def test_a_base_that_is_not_a_causal_lm_is_refused_in_one_line(llama_dir, tmp_path):
    _, tok = loading.load(str(llama_dir))
    bare = get_peft_model(AutoModel.from_pretrained(llama_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(IA2Error, match=r"^IA2Trainer: the base model must be a causal LM, not LlamaModel$"):
        IA2Trainer(bare, _args(tmp_path, method="sft", max_steps=1), toy_rows(8), processing_class=tok)


def test_the_config_is_trls_sft_config_where_trl_is_installed_and_transformers_arguments_without():
    """A TRL script's SFTConfig settings carry over; without TRL the config stands on TrainingArguments alone."""
    trl = pytest.importorskip("trl")
    args = IA2Config(output_dir="out", max_length=256, report_to="none", use_cpu=True)
    assert isinstance(args, trl.SFTConfig) and args.max_length == 256
    assert (args.learning_rate, args.bf16, args.max_grad_norm) == (1e-3, False, 0.0), "the paper's fp32 Adam"
    without = (
        "import sys; sys.modules['trl'] = None\n"
        "from transformers import TrainingArguments\n"
        "from ia2.trainer import IA2Config\n"
        "assert IA2Config.__mro__[1] is TrainingArguments\n"
        "assert IA2Config(output_dir='out', report_to='none').method == 'ia2-sft'\n"
    )
    done = subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_teachers_cache_key_names_the_base_model_not_the_adapters_initialisation(llama_dir, tmp_path):
    keys = set()
    for kind, seed in (("lora", 0), ("lora", 1), ("ia3", 0)):
        model, tok = loading.load(str(llama_dir))
        plain = model_fingerprint(model)
        trainer = IA2Trainer(adapters.fresh(model, kind, seed), _args(tmp_path), toy_rows(8), processing_class=tok)
        keys.add(trainer.handle.fingerprint)
    assert keys == {plain}


def test_the_card_keeps_what_push_to_hub_passes(llama_dir, tmp_path):
    model, tok = loading.load(str(llama_dir))
    trainer = IA2Trainer(adapters.fresh(model, "lora", 0), _args(tmp_path), toy_rows(8), processing_class=tok)
    trainer.create_model_card(license="apache-2.0", tags=["sentiment"], dataset="stanfordnlp/sst2")
    card = ModelCard.load(tmp_path / "trainer" / "README.md").data
    assert card.tags == ["ia2", "ia2-sft", "arxiv:2509.22621", "sentiment"]
    assert (card.license, card.datasets, card.library_name) == ("apache-2.0", ["stanfordnlp/sst2"], "peft")
