"""Activation (gradient) checkpointing: the layers are recomputed in the backward pass, the taps still record each
position once, and training is unchanged: the same loss and gradients in the loop, the same adapter from
`ia2 train` and from IA2Trainer."""

from __future__ import annotations

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from conftest import toy_rows, write_jsonl
from ia2 import config
from ia2.commands import train as ia2_train
from ia2.config import TrainConfig
from ia2.model import adapters, loading, memory
from ia2.model.taps import Tap
from ia2.trainer import IA2Config, IA2Trainer
from ia2.training.loop import Item, Objective, batch_loss
from ia2.training.methods import IA2


def _loss_and_grads(peft, objective, items) -> tuple[float, dict[str, torch.Tensor]]:
    peft.train()
    peft.zero_grad()
    loss = batch_loss(objective, items)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in peft.named_parameters() if p.requires_grad}


def test_checkpointed_layers_give_the_same_loss_and_gradients_and_the_tap_records_once(loaded):
    model, tok = loaded
    peft = adapters.fresh(model, "lora", 0)
    with torch.no_grad():
        for p in (p for p in peft.parameters() if p.requires_grad):
            p.add_(0.02 * torch.randn_like(p))
    tap, layers, hidden = Tap(peft), model.config.num_hidden_layers, model.config.hidden_size
    rows = toy_rows(4)
    items = [
        Item(
            tok(f"Question: {r['question']}\nAnswer:").input_ids,
            [5, 6][: 1 + i % 2],
            torch.randn(layers, 1 + i % 2, hidden),
        )
        for i, r in enumerate(rows)
    ]
    objective = Objective(peft, tap, IA2, TrainConfig(), tok.pad_token_id)
    plain = _loss_and_grads(peft, objective, items)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in tap.modules]
    peft.activation_checkpointing_enable({"use_reentrant": False})
    try:
        checkpointed = _loss_and_grads(peft, objective, items)
    finally:
        for hook in hooks:
            hook.remove()
        peft.activation_checkpointing_disable()
    assert len(calls) == 2 * layers, "every layer ran twice: forward, then recomputed in the backward pass"
    assert checkpointed[0] == plain[0]
    assert all(torch.allclose(checkpointed[1][k], plain[1][k], rtol=0, atol=1e-7) for k in plain[1])


def test_the_estimate_of_a_training_pass_keeps_only_layer_inputs_when_checkpointed(loaded):
    model, _ = loaded
    shape = memory.Shape.of(model)
    full = memory.peak_bytes(shape, 4, 256, 1, True)
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        checkpointed = memory.Shape.of(model)
    finally:
        model.activation_checkpointing_disable()
    assert checkpointed.checkpointed and not shape.checkpointed
    assert memory.peak_bytes(shape, 4, 256, 1, False) < memory.peak_bytes(checkpointed, 4, 256, 1, True) < full


def test_ia2_train_and_the_trainer_train_the_same_adapter_checkpointed_or_not(llama_dir, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", toy_rows(12))
    cfg = config.make(str(llama_dir), f"jsonl:{path}", methods=["ia2"], seeds=[0], max_steps=3, restore_best=False)
    ia2_train.train(cfg, tmp_path / "plain")
    ia2_train.train(
        config.make(
            str(llama_dir),
            f"jsonl:{path}",
            methods=["ia2"],
            seeds=[0],
            max_steps=3,
            restore_best=False,
            activation_checkpointing=True,
        ),
        tmp_path / "checkpointed",
    )
    plain, checkpointed = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("plain", "checkpointed"))
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=0, atol=1e-6) for k in plain)
    states = []
    for on in (False, True):
        model, tok = loading.load(str(llama_dir))
        peft = adapters.fresh(model, "lora", 0)
        args = IA2Config(
            output_dir=str(tmp_path / f"t{on}"),
            method="ia2",
            max_steps=3,
            activation_checkpointing=on,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
        )
        IA2Trainer(peft, args, toy_rows(12)[:8], toy_rows(12)[8:], processing_class=tok).train()
        assert peft.is_activation_checkpointing == on
        states.append(get_peft_model_state_dict(peft))
    assert all(torch.allclose(states[0][k], states[1][k], rtol=0, atol=1e-6) for k in states[0])
