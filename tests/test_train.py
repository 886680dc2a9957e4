"""Training one IA2 stage: dev loss falls, only adapter weights move, the best state is restored; adapters reload."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from peft import PeftModel

from conftest import ARCHS, icl_prompts, toy_task_and_encoder
from ia2.config import TrainConfig
from ia2.model import adapters, forward_pass, loading
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.training import loop
from ia2.training.loop import Item
from ia2.training.methods import Stage

IA2 = Stage("ia2", "icl")
N_TRAIN, N_DEV = 8, 4


@dataclass
class Setup:
    folder: object
    model: PeftModel
    tokenizer: object
    tap: Tap
    train_items: list
    dev_items: list
    base_before: dict
    lora_before: dict


def _setup(folder, toy_jsonl, seed=0) -> Setup:
    model, tok = loading.load(str(folder))
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    train_idx, dev_idx = list(range(N_TRAIN)), list(range(N_TRAIN, N_TRAIN + N_DEV))
    # leave-one-out demos from the training examples for both train and dev teacher prompts
    prompts = icl_prompts(task, encoder, train_idx + dev_idx, train_idx, k=N_TRAIN - 1, seed=seed)
    teacher = targets.collect(model, Tap(model), tok, prompts)
    plain = [encoder.encode(task.examples[i]).prompt for i in train_idx + dev_idx]
    items = [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)]
    peft = adapters.fresh(model, "lora", seed)
    state = {n: p.detach().clone() for n, p in peft.named_parameters()}
    base = {n: v for n, v in state.items() if "lora_" not in n}
    lora = {n: v for n, v in state.items() if "lora_" in n}
    assert lora and all(not p.requires_grad for n, p in peft.named_parameters() if "lora_" not in n)
    return Setup(folder, peft, tok, Tap(peft), items[:N_TRAIN], items[N_TRAIN:], base, lora)


@pytest.fixture(scope="module", params=ARCHS)
def trained(request, model_dirs, toy_jsonl):
    s = _setup(model_dirs[request.param], toy_jsonl)
    cfg = TrainConfig(lr=3e-3, train_batch_size=4, max_epochs=15, eval_every=2, patience=3)
    log = loop.train_stage(
        s.model, s.tap, s.train_items, s.dev_items, IA2, cfg, seed=0, pad_id=s.tokenizer.pad_token_id
    )
    return s, cfg, log


def test_ia2_training_reduces_dev_loss(trained):
    s, cfg, log = trained
    assert log["history"][0]["step"] == 0
    assert log["best_dev_loss"] < log["history"][0]["dev_loss"]
    assert log["best_dev_loss"] == min(h["dev_loss"] for h in log["history"])
    assert log["stage"] == "ia2:icl" and log["diverged"] is None


def test_only_adapter_weights_change(trained):
    s, _, _ = trained
    after = dict(s.model.named_parameters())
    for name, before in s.base_before.items():
        assert torch.equal(after[name], before), f"base weight {name} changed"
    changed = [n for n, before in s.lora_before.items() if not torch.equal(after[n], before)]
    assert changed, "no LoRA weight changed"
    assert any("lora_B" in n for n in changed)


@pytest.mark.parametrize("per_layer_norm", [False, True])
def test_dev_loss_does_not_depend_on_its_batch_size(trained, per_layer_norm):
    """With --per-layer-norm too: every dev batch is normalised by the whole dev set's teacher scale."""
    s, cfg, _ = trained
    cfg = replace(cfg, per_layer_norm=per_layer_norm)
    losses = [
        loop.dev_loss(
            loop.Objective(s.model, s.tap, IA2, replace(cfg, dev_batch_size=size), s.tokenizer.pad_token_id),
            s.dev_items,
        )
        for size in (1, 3, 16)
    ]
    assert 3 < len(s.dev_items) < 16
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)


def test_best_dev_state_is_restored(trained):
    s, cfg, log = trained
    again = loop.dev_loss(loop.Objective(s.model, s.tap, IA2, cfg, s.tokenizer.pad_token_id), s.dev_items)
    assert again == pytest.approx(log["best_dev_loss"], abs=1e-6, rel=1e-6)
    assert not s.model.training


def test_log_accounts_for_steps_and_early_stopping(trained):
    s, cfg, log = trained
    steps_per_epoch = math.ceil(N_TRAIN / cfg.train_batch_size)
    history = log["history"]
    last = [log["steps"]] if log["steps"] % cfg.eval_every else []  # a final state between checks is checked too
    assert [h["step"] for h in history] == list(range(0, log["steps"] + 1, cfg.eval_every)) + last
    assert log["epochs"] == math.ceil(log["steps"] / steps_per_epoch)
    assert history[[h["step"] for h in history].index(log["best_step"])]["dev_loss"] == log["best_dev_loss"]
    if log["steps"] < cfg.max_epochs * steps_per_epoch:  # stopped early: `patience` evaluations without improvement
        after_best = [h for h in history if h["step"] > log["best_step"]]
        assert len(after_best) == cfg.patience
        assert all(h["dev_loss"] >= log["best_dev_loss"] for h in after_best)


def test_restores_best_state_when_later_steps_are_worse(model_dirs, toy_jsonl):
    """A learning rate so high that the dev loss gets worse after its best point: the returned model must be
    the best one, not the last one."""
    s = _setup(model_dirs["llama"], toy_jsonl)
    cfg = TrainConfig(lr=0.3, train_batch_size=4, max_epochs=12, eval_every=1, patience=4)
    log = loop.train_stage(
        s.model, s.tap, s.train_items, s.dev_items, IA2, cfg, seed=0, pad_id=s.tokenizer.pad_token_id
    )
    worse_later = [h for h in log["history"] if h["step"] > log["best_step"] and h["dev_loss"] > log["best_dev_loss"]]
    assert worse_later, "setup: the run should have worsened after its best point"
    again = loop.dev_loss(loop.Objective(s.model, s.tap, IA2, cfg, s.tokenizer.pad_token_id), s.dev_items)
    assert again == pytest.approx(log["best_dev_loss"], abs=1e-6, rel=1e-6)


def test_keep_last_state_for_reference_parity(model_dirs, toy_jsonl):
    """restore_best=False (the reference code's behaviour) leaves the last state: its dev loss is the last one
    logged."""
    s = _setup(model_dirs["llama"], toy_jsonl)
    cfg = TrainConfig(lr=0.3, train_batch_size=4, max_epochs=12, eval_every=1, patience=4, restore_best=False)
    log = loop.train_stage(
        s.model, s.tap, s.train_items, s.dev_items, IA2, cfg, seed=0, pad_id=s.tokenizer.pad_token_id
    )
    assert log["history"][-1]["dev_loss"] > log["best_dev_loss"], "setup: the last state should be worse than the best"
    again = loop.dev_loss(loop.Objective(s.model, s.tap, IA2, cfg, s.tokenizer.pad_token_id), s.dev_items)
    assert again == pytest.approx(log["history"][-1]["dev_loss"], abs=1e-6, rel=1e-6)


def test_max_steps_caps_a_stage(model_dirs, toy_jsonl):
    s = _setup(model_dirs["llama"], toy_jsonl)
    cfg = TrainConfig(lr=1e-3, train_batch_size=4, max_epochs=50, eval_every=2, patience=100, max_steps=5)
    log = loop.train_stage(
        s.model, s.tap, s.train_items, s.dev_items, IA2, cfg, seed=0, pad_id=s.tokenizer.pad_token_id
    )
    assert log["steps"] == 5 and log["epochs"] == 3
    assert [h["step"] for h in log["history"]] == [0, 2, 4, 5], "the last step's state is checked on dev, not dropped"


def test_training_is_deterministic_for_a_seed(model_dirs, toy_jsonl):
    logs, states = [], []
    for _ in range(2):
        s = _setup(model_dirs["llama"], toy_jsonl)
        cfg = TrainConfig(lr=3e-3, max_epochs=4, eval_every=1)
        logs.append(
            loop.train_stage(
                s.model, s.tap, s.train_items, s.dev_items, IA2, cfg, seed=5, pad_id=s.tokenizer.pad_token_id
            )
        )
        states.append(loop.adapter_state(s.model))
    assert logs[0] == logs[1]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_sft_stage_trains_on_ce(model_dirs, toy_jsonl):
    s = _setup(model_dirs["llama"], toy_jsonl)
    gold = [Item(i.prompt, i.answer) for i in s.train_items]  # ce needs no activations
    dev = [Item(i.prompt, i.answer) for i in s.dev_items]
    cfg = TrainConfig(lr=1e-2, max_epochs=6, eval_every=1, patience=6)
    log = loop.train_stage(s.model, s.tap, gold, dev, Stage("ce", "gold"), cfg, seed=0, pad_id=s.tokenizer.pad_token_id)
    assert log["stage"] == "ce:gold"
    assert log["best_dev_loss"] < log["history"][0]["dev_loss"]
    # the ce dev loss is the mean −log p of the dev answers
    batch = forward_pass.make_batch([i.prompt for i in dev], [i.answer for i in dev], s.tokenizer.pad_token_id)
    with torch.no_grad():
        logits, _ = forward_pass.forward(s.model, batch)
    logp = torch.log_softmax(logits[:, -1].float(), -1)
    want = -logp[torch.arange(len(dev)), torch.tensor([i.answer[0] for i in dev])].mean().item()
    assert loop.dev_loss(
        loop.Objective(s.model, s.tap, Stage("ce", "gold"), cfg, s.tokenizer.pad_token_id), dev
    ) == pytest.approx(want, rel=1e-5)


def test_saved_adapter_reloads_to_identical_logits(trained, tmp_path):
    s, _, _ = trained
    path = tmp_path / "adapter"
    adapters.save(s.model, path, "tiny", {"README.md": "# card\n"})
    assert (path / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".adapter.*")), "atomic save must not leave a temporary folder"
    base, _ = loading.load(str(s.folder))
    reloaded = PeftModel.from_pretrained(base, str(path)).eval()
    prompts = [i.prompt for i in s.dev_items + s.train_items]
    batch = forward_pass.make_batch(prompts, [[0]] * len(prompts), s.tokenizer.pad_token_id)
    with torch.no_grad():
        want, _ = forward_pass.forward(s.model, batch)
        got, _ = forward_pass.forward(reloaded, batch)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    with reloaded.disable_adapter(), torch.no_grad():
        without, _ = forward_pass.forward(reloaded, batch)
    assert not torch.allclose(without, want, atol=1e-4), "the trained adapter should change the logits"


def test_fresh_unwraps_an_earlier_adapter(model_dirs):
    model, _ = loading.load(str(model_dirs["llama"]))
    first = adapters.fresh(model, "lora", 0)
    with torch.no_grad():
        for n, p in first.named_parameters():
            if "lora_B" in n:
                p.fill_(1.0)
    second = adapters.fresh(first, "lora", 1)
    lora = {n: p for n, p in second.named_parameters() if "lora_" in n}
    assert lora and all(torch.count_nonzero(p) == 0 for n, p in lora.items() if "lora_B" in n)
    names = [n for n, _ in second.named_modules() if n.endswith("q_proj")]
    assert len(names) == model.config.num_hidden_layers, "adapters must not nest"
    # same seed, same initialisation
    a = loop.adapter_state(adapters.fresh(second, "lora", 7))
    b = loop.adapter_state(adapters.fresh(second, "lora", 7))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_merged_bf16_copy_is_close_but_not_the_trained_model(trained):
    """Reference parity: the adapter merged into a bf16 copy; the trained fp32 model itself is left as it was."""
    s, _, _ = trained
    ids = torch.tensor([s.train_items[0].prompt])
    with torch.no_grad():
        want = s.model(input_ids=ids).logits[0, -1]
        merged = adapters.merged_bf16(s.model)
        got = merged(input_ids=ids).logits[0, -1].float()
    assert next(merged.parameters()).dtype == torch.bfloat16 and not isinstance(merged, PeftModel)
    assert not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.1)
    assert next(p for n, p in s.model.named_parameters() if "lora_" in n).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(s.model(input_ids=ids).logits[0, -1], want)


def test_merge_needs_a_mergeable_adapter(model_dirs):
    model, _ = loading.load(str(model_dirs["llama"]))
    prompt = adapters.fresh(model, {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2}, 0)
    with pytest.raises(adapters.IA2Error, match="only LORA and IA3"):
        adapters.merged_bf16(prompt)
