"""A 4-bit base (bitsandbytes NF4, QLoRA) on the CPU: `ia2 train --quantization nf4` and IA2Trainer train an adapter
on it, the teacher being the same quantised base with the adapter disabled. bitsandbytes quantises in blocks of 64
inputs, so the tiny model here is 64 wide."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from conftest import make_model_folder, toy_rows, write_jsonl
from ia2 import config
from ia2.commands import train as ia2_train
from ia2.errors import IA2Error
from ia2.model import adapters, loading
from ia2.teacher.targets import model_fingerprint
from ia2.trainer import IA2Config, IA2Trainer


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("tiny-64"), "llama", hidden=64)


def test_a_4bit_base_loads_quantised_and_its_teacher_targets_are_its_own(wide_dir):
    full, _ = loading.load(str(wide_dir))
    model, _ = loading.load(str(wide_dir), quantization="nf4")
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)
    assert model_fingerprint(model) != model_fingerprint(full), "a quantised base's cached targets are its own"


def test_ia2_train_and_the_trainer_train_an_adapter_on_a_4bit_base(wide_dir, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", toy_rows(12))
    settings = dict(methods=["ia2-sft"], seeds=[0], max_steps=2, restore_best=False, quantization="nf4")
    ia2_train.train(config.make(str(wide_dir), f"jsonl:{path}", **settings), tmp_path / "cli")
    model, tok = loading.load(str(wide_dir), quantization="nf4")
    peft = adapters.fresh(model, "lora", 0)
    start = {k: v.clone() for k, v in get_peft_model_state_dict(peft).items()}
    trained = load_file(tmp_path / "cli" / "adapter_model.safetensors")
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-4
    args = IA2Config(
        output_dir=str(tmp_path / "t"),
        method="ia2-sft",
        max_steps=2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    IA2Trainer(peft, args, toy_rows(12)[:8], toy_rows(12)[8:], processing_class=tok).train()
    after = get_peft_model_state_dict(peft)
    assert all(torch.isfinite(after[k]).all() for k in after)
    assert max((after[k] - start[k]).abs().max().item() for k in start) > 1e-4


@pytest.mark.parametrize("setting", [{"pack": 2}, {"merge_bf16": True}])
def test_what_a_4bit_base_does_not_do_is_refused_in_one_line(setting):
    with pytest.raises(IA2Error, match="with quantization nf4") as caught:
        config.make("m", "t", quantization="nf4", **setting)
    assert "\n" not in str(caught.value)
