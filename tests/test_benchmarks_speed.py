"""The speed benchmark: its reference loop reproduces our teacher targets and trains, and the script writes its
report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import icl_prompts, toy_task_and_encoder
from ia2.config import TrainConfig
from ia2.model import adapters, loading
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training.loop import Item, Objective, batch_loss
from ia2.training.methods import IA2, SFT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import reference_loop
import speed


def _prompts(model, tok, toy_jsonl, n: int = 6) -> list[list[int]]:
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    return icl_prompts(task, encoder, list(range(n)), list(range(12)), k=3)


@pytest.mark.parametrize("max_new_tokens", [1, 4])
def test_reference_teacher_equals_collect(loaded, toy_jsonl, max_new_tokens):
    """Same greedy tokens and activations (fp32, within 1e-4) as our batched, KV-cached collection (at self_attn's
    output, which the reference reads)."""
    model, tok = loaded
    prompts = _prompts(model, tok, toy_jsonl)
    ours = targets.collect(
        model,
        Tap(model, "attn_pre_norm"),
        tok,
        prompts,
        CollectSettings(max_new_tokens=max_new_tokens, stop="", batch_size=4),
    )
    tokens, acts = reference_loop.collect(model, prompts, max_new_tokens)
    assert tokens == ours.tokens
    if max_new_tokens > 1:
        assert any(len(t) > 1 for t in tokens), "multi-token answers should be exercised"
    for mine, theirs in zip(ours.acts, acts):
        assert theirs.shape == mine.shape
        torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-4)


def test_reference_ia2_epoch_lowers_the_loss(model_dirs, toy_jsonl):
    model, tok = loading.load(str(model_dirs["llama"]))
    prompts = _prompts(model, tok, toy_jsonl, n=8)
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    tokens, acts = reference_loop.collect(model, prompts, 1)
    plain = [encoder.encode(task.examples[i]).prompt for i in range(len(prompts))]
    examples = [reference_loop.Example(p, t, a) for p, t, a in zip(plain, tokens, acts)]
    student = adapters.fresh(model, "lora", seed=0)
    recorder = reference_loop.AttentionRecorder(student)
    before = reference_loop.dev_pass(student, recorder, examples, "ia2")
    log = reference_loop.train(
        student, examples, examples, "ia2", reference_loop.LoopConfig(lr=1e-2, max_epochs=1, patience=None)
    )
    after = reference_loop.dev_pass(student, recorder, examples, "ia2")
    assert (log.examples, log.steps, len(log.dev_losses)) == (8, 2, 1)
    assert after < before


def test_reference_losses_equal_the_library_s_on_one_example(model_dirs, toy_jsonl):
    """Σ_layers MSE at the answer positions and CE on the answer, as our trainer computes them for a batch of one."""
    model, tok = loading.load(str(model_dirs["qwen3"]))
    prompts = _prompts(model, tok, toy_jsonl, n=3)
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    tokens, acts = reference_loop.collect(model, prompts, 3)
    student = adapters.fresh(model, "lora", seed=0)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    recorder, tap = reference_loop.AttentionRecorder(student), Tap(student)
    for i, (answer, act) in enumerate(zip(tokens, acts)):
        plain = encoder.encode(task.examples[i])
        item = Item(plain.prompt, answer, act)
        with torch.no_grad():
            ours = batch_loss(Objective(student, tap, IA2, TrainConfig(), tok.pad_token_id), [item])
            theirs = reference_loop.ia2_loss(student, recorder, reference_loop.Example(plain.prompt, answer, act))
            torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-7)
            ours = batch_loss(
                Objective(student, tap, SFT, TrainConfig(), tok.pad_token_id), [Item(plain.prompt, plain.answer)]
            )
            theirs = reference_loop.ce_loss(student, recorder, reference_loop.Example(plain.prompt, plain.answer))
            torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quick", [False, True])
def test_speed_script_smoke(tmp_path, quick):
    out = tmp_path / "result"
    argv = [
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--n",
        "8",
        "--dev",
        "4",
        "--t-long",
        "3",
        "--max-epochs",
        "1",
        "--out",
        str(out),
    ] + (["--quick"] if quick else [])
    speed.main(argv)
    report = json.loads((tmp_path / "result.json").read_text())
    table = (tmp_path / "result.md").read_text()
    assert {r["phase"] for r in report["rows"]} == set(speed.PHASES)
    for row in report["rows"]:
        assert isinstance(row["speedup"], float) and row["speedup"] > 0, row
        assert row["phase"] in table
    assert report["meta"]["model"]["layers"] == 2


def test_an_interrupted_speed_run_keeps_its_finished_phases(tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(speed.Bench, "epoch_row", stop)
    out = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt):
        speed.main(
            [
                "--device",
                "cpu",
                "--model",
                "tiny",
                "--n",
                "8",
                "--dev",
                "4",
                "--t-long",
                "3",
                "--quick",
                "--out",
                str(out),
            ]
        )
    report = json.loads((tmp_path / "result.json").read_text())
    assert [r["phase"] for r in report["rows"]] == ["teacher_t1", "teacher_tlong"]
    assert "teacher_tlong" in (tmp_path / "result.md").read_text()
