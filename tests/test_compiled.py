"""Compiled passes (`--compile`): widths padded to a bucket, static-cache generation and compiled decoder layers give
what the eager passes give.

Tolerance: padding and the static cache change no arithmetic a row depends on beyond rounding (measured: logits and
activations within 1.5e-6); compiled layers fuse operations, so their dev losses agree to 1e-4 relative and adapter
weights to 1e-4 (measured: 1.1e-7 and 7.2e-6)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from conftest import ARCHS, icl_prompts, make_model_folder, toy_task_and_encoder
from ia2.config import TrainConfig
from ia2.model import adapters, compiled, forward_pass, generation, loading
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.training.loop import Item, Lane, adapter_state, train_lanes
from ia2.training.methods import Stage


def _prompts(model, tok, toy_jsonl, n: int = 6, k: int = 3) -> list[list[int]]:
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    return icl_prompts(task, encoder, list(range(n)), list(range(12)), k=k)


@pytest.mark.parametrize("arch", ARCHS)
def test_bucketed_widths_change_no_row(model_dirs, toy_jsonl, arch):
    model, tok = loading.load(str(model_dirs[arch]))
    model = adapters.fresh(model, "lora", 0)
    prompts = _prompts(model, tok, toy_jsonl)
    batch = forward_pass.make_batch(prompts, [[5, 6]] * len(prompts), tok.pad_token_id)
    assert batch.input_ids.shape[1] % compiled.BUCKET, "the test needs a width off the bucket"
    padded = batch.padded(compiled.BUCKET)
    assert padded.input_ids.shape[1] % compiled.BUCKET == 0 and padded.input_ids.shape[1] > batch.input_ids.shape[1]
    tap = Tap(model)
    with torch.no_grad():
        want, got = forward_pass.forward(model, batch, tap), forward_pass.forward(model, padded, tap)
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_static_cache_generates_what_the_dynamic_one_does(model_dirs, toy_jsonl, arch):
    model, tok = loading.load(str(model_dirs[arch]))
    prompts = _prompts(model, tok, toy_jsonl)
    dynamic = generation.generate(model, tok, prompts, 6, "")
    model.generation_config.cache_implementation = "static"
    assert generation.generate(model, tok, prompts, 6, "") == dynamic


def test_compiled_layers_train_as_eager_ones(model_dirs, toy_jsonl):
    """An IA2 stage of 6 steps with dev checks, eager and with every decoder layer compiled (`--compile on`)."""
    model, tok = loading.load(str(model_dirs["llama"]))
    prompts = _prompts(model, tok, toy_jsonl, n=10)
    teacher = targets.collect(model, Tap(model), tok, prompts)
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    plain = [encoder.encode(task.examples[i]).prompt for i in range(10)]
    items = [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)]
    model = adapters.fresh(model, "lora", 0)
    lane = Lane(
        items[:7],
        items[7:],
        TrainConfig(lr=1e-2, train_batch_size=3, max_steps=6, eval_every=2),
        0,
        adapter_state(model),
    )
    stage, tap = Stage("ia2", "icl"), Tap(model)
    ((eager_log, eager_state),) = train_lanes(model, tap, [lane], stage, tok.pad_token_id)
    compiled.apply(model, "on")
    ((log, state),) = train_lanes(model, tap, [lane], stage, tok.pad_token_id)
    assert all(layer._compiled_call_impl is not None for layer in compiled.decoder_layers(model))
    assert (log["steps"], log["best_step"]) == (eager_log["steps"], eager_log["best_step"])
    for h, e in zip(log["history"], eager_log["history"]):
        assert h["dev_loss"] == pytest.approx(e["dev_loss"], rel=1e-4)
    for name, weight in eager_state.items():
        torch.testing.assert_close(state[name], weight, atol=1e-4, rtol=0)
    assert eager_log["history"][-1]["dev_loss"] < eager_log["history"][0]["dev_loss"]


def _counting_backend(calls: list[int]):
    """torch.compile's eager backend, counting each run of a compiled graph in calls[0]."""

    def backend(graph: torch.fx.GraphModule, example_inputs):
        def run(*args):
            calls[0] += 1
            return graph.forward(*args)

        return run

    return backend


def test_every_layer_call_of_a_deep_model_runs_compiled(tmp_path, toy_jsonl):
    """12 decoder layers, more than torch's default of 8 recompiles: across a teacher collection, one adapter, a pack
    of 3 and one adapter again, every layer call runs as one compiled graph (the eager backend keeps it cheap)."""
    model, tok = loading.load(str(make_model_folder(tmp_path / "deep", "llama", layers=12)))
    graphs, passes = [0], [0]
    model.model.register_forward_pre_hook(lambda module, args: passes.__setitem__(0, passes[0] + 1))
    compiled.apply(model, "on", backend=_counting_backend(graphs))
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    teacher = targets.collect(model, Tap(model), tok, icl_prompts(task, encoder, list(range(12)), list(range(12)), 3))
    counts = [("collection", passes[0] * 12, graphs[0])]
    plain = [encoder.encode(task.examples[i]).prompt for i in range(12)]
    items = [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)]
    states = [adapter_state(model := adapters.fresh(model, "lora", seed)) for seed in range(3)]
    cfg = TrainConfig(lr=1e-2, train_batch_size=3, max_steps=4, eval_every=2)
    lanes = [Lane(items[:9], items[9:], replace(cfg, max_steps=3 + k), k, states[k]) for k in range(3)]
    for name, trained in (("one adapter", lanes[:1]), ("a pack of 3", lanes), ("one again", lanes[1:2])):
        train_lanes(model, Tap(model), trained, Stage("ia2", "icl"), tok.pad_token_id)
        counts.append((name, passes[0] * 12, graphs[0]))
    assert compiled.eager_calls(model) == 0
    assert [(name, calls) for name, calls, _ in counts] == [(name, ran) for name, _, ran in counts]
    assert counts[-1][1] > counts[-2][1] > counts[1][1] > counts[0][1] > 0


def test_a_layer_that_falls_back_to_eager_is_warned_about(model_dirs, toy_jsonl, caplog, monkeypatch):
    """Past the recompile limit torch runs a layer eagerly: ia2 counts it and warns once, with torch's reason."""
    model, tok = loading.load(str(model_dirs["llama"]))
    compiled.apply(model, "on", backend="eager")
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    with caplog.at_level(logging.WARNING, logger="ia2.model.compiled"):
        targets.collect(model, Tap(model), tok, _prompts(model, tok, toy_jsonl, n=4))
        with torch.no_grad():
            model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)  # no mask: a variant over the limit
    assert compiled.eager_calls(model) > 0
    warned = [r.getMessage() for r in caplog.records if r.name == "ia2.model.compiled"]
    assert len(warned) == 1 and "ran uncompiled" in warned[0] and "recompile_limit" in warned[0], warned
