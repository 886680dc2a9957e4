"""Packed training: adapters trained together in one pass give what each gives trained alone.

Lanes differ in seed (data order, adapter init), learning rate, training set and patience, so some stop early and
leave the pack. Tolerance: a packed pass computes the same sums over a wider batch, whose products BLAS blocks
differently; dev losses agree to 1e-5 relative and adapter weights to 1e-5 (measured over every case here: at most
5.1e-7 and 2.0e-6), with identical step counts, epochs and early stops.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from peft import set_peft_model_state_dict

from conftest import ARCHS, icl_prompts, make_model_folder, small_run, toy_task_and_encoder
from ia2 import config
from ia2.commands import cli
from ia2.config import TrainConfig
from ia2.config.adapter_kinds import normalise, pack_refusal
from ia2.errors import IA2Error
from ia2.model import adapters, forward_pass, loading, memory
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.training import packing
from ia2.training.loop import Item, Lane, adapter_state, train_lanes
from ia2.training.methods import Stage

IA2, SFT = Stage("ia2", "icl"), Stage("ce", "gold")
LOSS_RTOL, WEIGHTS_ATOL = 1e-5, 1e-5


def _items(folder, toy_jsonl):
    """A tiny model and 24 IA2 items (teacher activations from 3 leave-one-out demos) with their gold answers."""
    model, tok = loading.load(str(folder))
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    idx = list(range(24))
    teacher = targets.collect(model, Tap(model), tok, icl_prompts(task, encoder, idx, idx, k=3))
    encoded = [encoder.encode(task.examples[i]) for i in idx]
    icl = [Item(e.prompt, t, a) for e, t, a in zip(encoded, teacher.tokens, teacher.acts)]
    gold = [Item(e.prompt, e.answer) for e in encoded]
    return model, tok, icl, gold


def _lanes(model, kind: str, items: list[Item]) -> list[Lane]:
    """Four lanes: two seeds × two learning rates, each its own training set; one with little patience."""
    base = TrainConfig(train_batch_size=3, max_epochs=4, eval_every=1, patience=3)
    lanes = []
    for k, (seed, lr) in enumerate([(0, 3e-3), (1, 3e-3), (0, 3e-2), (1, 1e-3)]):
        fresh = adapters.fresh(model, kind, seed)
        train, dev = items[k * 3 : k * 3 + 7 + k], items[18:24]
        cfg = replace(base, lr=lr, patience=1 if k == 2 else 3)
        lanes.append(Lane(train, dev, cfg, seed * 10 + k, adapter_state(fresh), f"lane{k}"))
    return lanes, fresh


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=WEIGHTS_ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stage", [IA2, SFT], ids=["ia2", "sft"])
def test_packed_lanes_train_as_they_would_alone(model_dirs, toy_jsonl, arch, kind, stage):
    model, tok, icl, gold = _items(model_dirs[arch], toy_jsonl)
    lanes, model = _lanes(model, kind, icl if stage == IA2 else gold)
    own = adapter_state(model)
    alone = [train_lanes(model, Tap(model), [lane], stage, tok.pad_token_id)[0] for lane in lanes]
    before = adapter_state(model)
    packed = train_lanes(model, Tap(model), lanes, stage, tok.pad_token_id)
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert all(torch.equal(v, before[k]) for k, v in adapter_state(model).items()), "its own adapter is untouched"
    steps = [log["steps"] for log, _ in packed]
    assert len(set(steps)) > 1, "a lane stopped early and left the pack"
    for (log_a, state_a), (log_p, state_p) in zip(alone, packed):
        assert {k: log_p[k] for k in ("steps", "epochs", "best_step", "stage")} == {
            k: log_a[k] for k in ("steps", "epochs", "best_step", "stage")
        }
        assert [h["step"] for h in log_p["history"]] == [h["step"] for h in log_a["history"]]
        for h_a, h_p in zip(log_a["history"], log_p["history"]):
            assert h_p["dev_loss"] == pytest.approx(h_a["dev_loss"], rel=LOSS_RTOL)
            assert h_p.get("train_loss", 0.0) == pytest.approx(h_a.get("train_loss", 0.0), rel=LOSS_RTOL)
        _close(state_p, state_a)
        assert not all(torch.equal(state_p[k], own[k]) for k in own), "the lane trained"
    assert max(log["history"][0]["dev_loss"] - log["best_dev_loss"] for log, _ in packed) > 0


@pytest.mark.parametrize("bounds", [(0, 2, 5, 6), (0, 2, 4, 6)], ids=["unequal", "equal"])
@pytest.mark.parametrize("arch", ARCHS)
def test_routed_rows_compute_their_own_adapters_output(model_dirs, toy_jsonl, arch, bounds):
    """Groups of rows (unequal sizes: weights gathered per row; equal: one batched product per adapter) each compute
    what their adapter computes alone."""
    model, tok, icl, _ = _items(model_dirs[arch], toy_jsonl)
    states = []
    for seed in range(3):
        model = adapters.fresh(model, "lora", seed)
        for p in model.parameters():  # a non-zero B, so that each adapter changes the output
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(seed))
        states.append(adapter_state(model))
    tap = Tap(model)
    rows = [icl[start:end] for start, end in zip(bounds, bounds[1:])]
    expected = []
    for state, group in zip(states, rows):
        set_peft_model_state_dict(model, state)
        batch = forward_pass.make_batch([i.prompt for i in group], [i.answer for i in group], tok.pad_token_id)
        expected.append(forward_pass.forward(model, batch, tap))
    with packing.lanes(model, states) as names:
        items = [i for g in rows for i in g]
        batch = forward_pass.make_batch([i.prompt for i in items], [i.answer for i in items], tok.pad_token_id)
        with packing.routed(model, names, [len(g) for g in rows]):
            logits, acts = forward_pass.forward(model, batch, tap)
    start = 0
    for (want_logits, want_acts), group in zip(expected, rows):
        got = slice(start, start + len(group))
        start += len(group)
        torch.testing.assert_close(logits[got, -want_logits.shape[1] :], want_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts[got, :, -want_acts.shape[2] :], want_acts, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected[0][0][0], expected[1][0][0]), "the adapters differ"


def test_prompt_learning_and_dropout_are_refused():
    assert "PROMPT_TUNING" in pack_refusal(normalise("prompt"))
    assert "lora_dropout" in pack_refusal(normalise({"peft_type": "LORA", "lora_dropout": 0.1}))
    assert pack_refusal(normalise("lora")) is None and pack_refusal(normalise("ia3")) is None


def test_lanes_with_different_losses_are_refused(model_dirs, toy_jsonl):
    model, tok, icl, _ = _items(model_dirs["llama"], toy_jsonl)
    lanes, model = _lanes(model, "lora", icl)
    lanes[1] = replace(lanes[1], cfg=replace(lanes[1].cfg, per_layer_norm=True))
    with pytest.raises(IA2Error, match="must share w, per_layer_norm"):
        train_lanes(model, Tap(model), lanes, IA2, tok.pad_token_id)


def test_the_cli_refuses_a_pack_it_cannot_train_in_one_line(llama_dir, toy_jsonl, tmp_path, capsys):
    argv = small_run(llama_dir, f"jsonl:{toy_jsonl}", tmp_path / "out", pack=2, adapter="prompt")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ia2: error: --pack must be 1 for PROMPT_TUNING adapters (packing takes LORA and IA3)"]
    assert not (tmp_path / "out").exists()


def test_pack_size_default(loaded):
    """One adapter at a time on a CPU; on a GPU as many as half the free memory holds, by the activation estimate."""
    model, _ = loaded
    cfg = config.make("m", "jsonl:t")
    items = [[Item([1] * 20, [2])] * 4] * 15
    assert packing.suggested(model, cfg, items) == 1
    qwen3_4b = memory.Shape(36, 2560, 9728, 32, 8, 128, 151936, 2, "sdpa", "cuda")
    per_lane = memory.peak_bytes(qwen3_4b, 4, 24, 1, True)
    assert memory.peak_bytes(replace(qwen3_4b, bytes=4), 4, 24, 1, True) > per_lane
    assert 2**30 < 15 * per_lane < 2**33, "a Qwen3-4B-shaped cell of 15 at the paper's sizes: a few GiB"


def test_packed_lanes_with_the_online_teacher(model_dirs, toy_jsonl):
    """With the online teacher (activations computed per batch with every adapter disabled) packed lanes still train
    as they would alone: the teacher pass sees no lane's update."""
    model, tok, icl, _ = _items(model_dirs["llama"], toy_jsonl)
    online = [Item(i.prompt, i.answer, icl_prompt=i.prompt + i.prompt) for i in icl]
    lanes, model = _lanes(model, "lora", online)
    alone = [train_lanes(model, Tap(model), [lane], IA2, tok.pad_token_id)[0] for lane in lanes]
    packed = train_lanes(model, Tap(model), lanes, IA2, tok.pad_token_id)
    for (log_a, state_a), (log_p, state_p) in zip(alone, packed):
        assert (log_p["steps"], log_p["best_step"]) == (log_a["steps"], log_a["best_step"])
        _close(state_p, state_a)


def test_biases_and_saved_modules_are_refused_and_a_failed_pack_leaves_nothing(model_dirs, toy_jsonl):
    assert "bias" in pack_refusal(normalise({"peft_type": "LORA", "bias": "all"}))
    assert "modules_to_save" in pack_refusal(normalise({"peft_type": "LORA", "modules_to_save": ["lm_head"]}))
    model, tok, icl, _ = _items(model_dirs["llama"], toy_jsonl)
    lanes, model = _lanes(model, "lora", icl)
    broken = {k: v[:1] for k, v in lanes[1].state.items()}  # a state of the wrong shape fails while loading
    with pytest.raises(RuntimeError):
        with packing.lanes(model, [lanes[0].state, broken]):
            pass
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert len(train_lanes(model, Tap(model), lanes[:2], IA2, tok.pad_token_id)) == 2, "a later pack still trains"


def test_dropout_draws_depend_on_the_lane_not_on_what_trained_before(model_dirs, toy_jsonl):
    """With LoRA dropout (trained alone), a lane's result is the same whatever ran before it: resumes and seed lists
    do not change it."""
    model, tok, icl, _ = _items(model_dirs["llama"], toy_jsonl)
    model = adapters.fresh(model, {"peft_type": "LORA", "lora_dropout": 0.3}, 0)
    lane = Lane(icl[:8], icl[18:], TrainConfig(train_batch_size=3, max_epochs=2, lr=1e-2), 0, adapter_state(model))
    first = train_lanes(model, Tap(model), [lane], IA2, tok.pad_token_id)[0][1]
    torch.rand(100)  # something else draws from the global generator in between
    again = train_lanes(model, Tap(model), [lane], IA2, tok.pad_token_id)[0][1]
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_cell_of_runs_that_differ_in_more_than_lr_is_refused(llama_dir, toy_jsonl, tmp_path):
    from ia2.run.experiment import Member, run_cell

    base = config.make(str(llama_dir), f"jsonl:{toy_jsonl}", seeds=[0])
    other = replace(base, seeds=(0, 1), train=replace(base.train, lr=3e-4))
    with pytest.raises(IA2Error, match="may differ only in their learning rate"):
        run_cell([Member(base, tmp_path / "a"), Member(other, tmp_path / "b")])


def test_a_pack_of_twelve_trains_as_each_alone(model_dirs, toy_jsonl):
    """Twelve lanes (6 seeds × 2 learning rates, training sets of 6 to 11 items, patience 1 or 3): a sweep cell's
    size, where every layer reads all twelve adapters and most lanes leave the pack before the last. Steps, epochs,
    early stops and dev losses agree as with four; weights too, but for a few elements where Adam, dividing by the
    root of a near-zero second moment, magnifies the rounding of the wider products (measured: eleven lanes within
    4e-6, one at lr 1e-2 with 7 of 4096 elements up to 4.2e-4; 2.1e-5 before fused Adam)."""
    model, tok, icl, _ = _items(model_dirs["qwen3"], toy_jsonl)
    base = TrainConfig(train_batch_size=3, max_epochs=3, eval_every=1)
    lanes = []
    for k in range(12):
        seed, lr = k // 2, (3e-3, 1e-2)[k % 2]
        model = adapters.fresh(model, "lora", seed)
        cfg = replace(base, lr=lr, patience=1 + 2 * (k % 3 == 0))
        lanes.append(Lane(icl[k % 7 : k % 7 + 6 + k % 6], icl[18:24], cfg, seed, adapter_state(model), f"lane{k}"))
    alone = [train_lanes(model, Tap(model), [lane], IA2, tok.pad_token_id)[0] for lane in lanes]
    packed = train_lanes(model, Tap(model), lanes, IA2, tok.pad_token_id)
    assert len({log["steps"] for log, _ in packed}) > 2, "lanes left the pack at different steps"
    for (log_a, state_a), (log_p, state_p) in zip(alone, packed):
        assert (log_p["steps"], log_p["epochs"], log_p["best_step"]) == (
            log_a["steps"],
            log_a["epochs"],
            log_a["best_step"],
        )
        for h_a, h_p in zip(log_a["history"], log_p["history"]):
            assert h_p["dev_loss"] == pytest.approx(h_a["dev_loss"], rel=LOSS_RTOL)
        diff = torch.cat([(state_p[k] - state_a[k]).abs().flatten() for k in state_a])
        assert (diff > WEIGHTS_ATOL).float().mean() < 0.005 and diff.max() < 1e-3


def test_a_base_model_with_dropout_is_not_packed(tmp_path, toy_jsonl):
    """Dropout in the base model (here attention dropout) draws one mask over a packed batch, not each lane's own:
    a pack is refused in one line naming the setting, and the default packs nothing."""
    from transformers import AutoConfig

    folder = make_model_folder(tmp_path / "dropout", "llama")
    config = AutoConfig.from_pretrained(folder)
    config.attention_dropout = 0.1
    config.save_pretrained(folder)
    model, tok, icl, _ = _items(folder, toy_jsonl)
    lanes, model = _lanes(model, "lora", icl)
    assert packing.base_dropout(model) == "attention_dropout=0.1"
    with pytest.raises(IA2Error, match="^--pack must be 1 for this model: its dropout attention_dropout=0.1") as err:
        train_lanes(model, Tap(model), lanes[:2], IA2, tok.pad_token_id)
    assert "\n" not in str(err.value)
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert len(train_lanes(model, Tap(model), lanes[:1], IA2, tok.pad_token_id)) == 1, "alone it trains"


def test_best_states_are_copied_from_the_parameters_and_skipped_without_restore(model_dirs, toy_jsonl, monkeypatch):
    """PEFT's state-dict walk runs once per adapter to map its keys to its parameters, not at every better dev check;
    without restore_best no best state is copied at all, only the final one."""
    model, tok, icl, _ = _items(model_dirs["llama"], toy_jsonl)
    lanes, model = _lanes(model, "lora", icl)
    walks, copies = [], []
    walk, copy = packing.get_peft_model_state_dict, packing.copy_state
    monkeypatch.setattr(packing, "get_peft_model_state_dict", lambda *a, **k: walks.append(1) or walk(*a, **k))
    monkeypatch.setattr(packing, "copy_state", lambda *a: copies.append(1) or copy(*a))
    (log, _), *_ = train_lanes(model, Tap(model), lanes[:1], IA2, tok.pad_token_id)
    better = sum(
        h["dev_loss"] < min(p["dev_loss"] for p in log["history"][:k]) for k, h in enumerate(log["history"]) if k
    )
    assert (len(walks), len(copies)) == (1, better) and better > 2
    walks.clear(), copies.clear()
    train_lanes(model, Tap(model), lanes, IA2, tok.pad_token_id)
    assert len(walks) == len(lanes), "one walk per packed adapter, when the pack is built"
    copies.clear()
    plain = [replace(lane, cfg=replace(lane.cfg, restore_best=False)) for lane in lanes]
    train_lanes(model, Tap(model), plain, IA2, tok.pad_token_id)
    assert len(copies) == len(lanes), "only each lane's final state"


def test_a_pack_serves_every_stage_of_a_method(llama_dir, toy_jsonl, tmp_path, monkeypatch):
    """IA2 → SFT for three seeds packed: the three adapters are added once for both stages, and removed before the
    adapters are evaluated and saved (each saved adapter is the model's own alone)."""
    from peft import PeftModel

    added = []
    add = PeftModel.add_adapter
    monkeypatch.setattr(
        PeftModel, "add_adapter", lambda self, name, *a, **k: added.append(name) or add(self, name, *a, **k)
    )
    argv = small_run(llama_dir, f"jsonl:{toy_jsonl}", tmp_path / "out", methods="ia2-sft", seeds="0,1,2", pack=3)
    assert cli.main([*argv, "--max-epochs", "2"]) == 0
    assert added == ["pack0", "pack1", "pack2"]
    saved = sorted(p.parent.name for p in (tmp_path / "out").rglob("adapter_config.json"))
    assert saved and not any(name.startswith("pack") for name in saved)
