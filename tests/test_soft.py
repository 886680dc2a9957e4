"""Soft-label SFT: the KL loss to the teacher's next-token distribution, its collection and cache, and training on
it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import full_attn_outputs, icl_prompts, toy_task_and_encoder
from ia2.config import TrainConfig
from ia2.errors import IA2Error
from ia2.model import adapters
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training import loop, losses
from ia2.training.loop import Item
from ia2.training.methods import Stage

SOFT = Stage("soft", "icl")
B, T, V = 3, 4, 11


def _random(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits, teacher log-probs [B,T,V] and a mask with the first position of row 0 padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    teacher = F.log_softmax(torch.randn(B, T, V, generator=g) * 2, dim=-1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 0] = False
    return logits, teacher, mask


def _top(teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = teacher.topk(k, dim=-1)
    return ids, values


def test_full_distribution_equals_torch_kl_div():
    logits, teacher, mask = _random()
    per_position = F.kl_div(F.log_softmax(logits, -1), teacher, log_target=True, reduction="none").sum(-1)
    want = per_position[mask].mean()
    torch.testing.assert_close(losses.soft(logits, None, teacher, mask), want)


def test_top_k_with_k_equal_to_vocabulary_is_the_full_kl():
    logits, teacher, mask = _random(1)
    ids, values = _top(teacher, V)
    torch.testing.assert_close(losses.soft(logits, ids, values, mask), losses.soft(logits, None, teacher, mask))


def test_top_k_buckets_by_hand():
    # teacher (0.7, 0.1, 0.1, 0.1) keeps ids 0 and 1; the rest bucket holds 0.2; the student is uniform
    teacher = torch.log(torch.tensor([[[0.7, 0.1]]]))
    ids = torch.tensor([[[0, 1]]])
    logits = torch.zeros(1, 1, 4)
    want = 0.7 * math.log(0.7 / 0.25) + 0.1 * math.log(0.1 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    got = losses.soft(logits, ids, teacher, torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(got, torch.tensor(want))


@pytest.mark.parametrize("k", [None, 1, 3, V])
def test_zero_when_student_is_teacher_and_non_negative_otherwise(k):
    logits, teacher, mask = _random(2)
    ids, values = (None, teacher) if k is None else _top(teacher, k)
    assert abs(losses.soft(teacher.clone(), ids, values, mask).item()) < 1e-6
    for seed in range(5):
        other, _, _ = _random(10 + seed)
        assert losses.soft(other, ids, values, mask).item() >= 0


@pytest.mark.parametrize("k", [None, 3])
def test_masked_positions_are_ignored_and_gradients_flow(k):
    logits, teacher, mask = _random(3)
    ids, values = (None, teacher) if k is None else _top(teacher, k)
    logits.requires_grad_(True)
    loss = losses.soft(logits, ids, values, mask)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[mask].abs().sum() > 0
    assert torch.equal(logits.grad[0, 0], torch.zeros(V))
    # padding as `right_align` writes it (ids 0, log-probs 0) and garbage logits there change nothing
    padded_values, changed = values.clone(), logits.detach().clone()
    padded_values[0, 0] = 0.0
    changed[0, 0] = 100.0
    padded_ids = None if ids is None else ids.clone()
    if padded_ids is not None:
        padded_ids[0, 0] = 0
    again = losses.soft(changed, padded_ids, padded_values, mask)
    assert torch.isfinite(again)
    torch.testing.assert_close(again, loss.detach())


@pytest.mark.parametrize("distribution", [0, 5])
def test_collected_distribution_is_the_unpadded_teacher_forced_one(loaded, toy_jsonl, distribution):
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, list(range(6)), list(range(12)), k=3)
    tap = Tap(model)
    plain = targets.collect(model, tap, tok, prompts, CollectSettings(max_new_tokens=3, batch_size=4))
    got = targets.collect(
        model, tap, tok, prompts, CollectSettings(max_new_tokens=3, batch_size=4, distribution=distribution)
    )
    assert plain.top_ids is None and plain.top_logp is None
    assert got.tokens == plain.tokens and all(torch.equal(a, b) for a, b in zip(got.acts, plain.acts))
    assert (got.top_ids is None) == (distribution == 0)
    vocab = model.config.vocab_size
    for i, (p, answer) in enumerate(zip(prompts, got.tokens)):
        _, logits = full_attn_outputs(model, p + answer)
        want = F.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(answer)].float(), dim=-1)
        logp = got.top_logp[i]
        assert logp.dtype == torch.float32
        if distribution == 0:
            assert logp.shape == (len(answer), vocab)
            torch.testing.assert_close(logp, want, rtol=0, atol=1e-5)
        else:
            ids = got.top_ids[i]
            assert logp.shape == ids.shape == (len(answer), distribution)
            torch.testing.assert_close(logp, want.gather(-1, ids), rtol=0, atol=1e-5)
            torch.testing.assert_close(logp, want.topk(distribution, dim=-1).values, rtol=0, atol=1e-5)
            assert ids[:, 0].tolist() == answer  # greedy: the answer token is the teacher's most likely


@pytest.mark.parametrize("distribution", [0, 5])
def test_cached_distribution_round_trips(loaded, arch, toy_jsonl, tmp_path, monkeypatch, distribution):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, list(range(5)), list(range(10)), k=2)
    tap, fields = Tap(model), {"model": targets.model_fingerprint(model), "seed": 0}
    first = targets.cached_collect(
        model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2, distribution=distribution)
    )
    calls = []
    real = targets.collect
    monkeypatch.setattr(targets, "collect", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = targets.cached_collect(
        model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2, distribution=distribution)
    )
    assert calls == [], "the second call must load the cached file"
    assert second.tokens == first.tokens
    for name in ("acts", "top_ids", "top_logp"):
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None) == (b is None) == (name == "top_ids" and distribution == 0)
        assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a or [], b or []))
    # without a distribution the key is the one it always was (on Gemma 3, since `attn` reads the post-attention
    # norm); each distribution has its own
    base = {**fields, "site": tap.site, "max_new_tokens": 2, "stop": "\n\n"}
    base |= {"module": "post_attention_layernorm"} if arch == "gemma3" else {}
    names = {f.name for f in (tmp_path / "cache" / "targets").glob("*.safetensors")}
    assert names == {f"{targets.cache_key({**base, 'distribution': distribution}, prompts)}.safetensors"}
    assert targets.cached_collect(model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2)).top_logp is None
    assert f"{targets.cache_key(base, prompts)}.safetensors" in {
        f.name for f in (tmp_path / "cache" / "targets").iterdir()
    }


@pytest.mark.parametrize("distribution", [0, 5])
def test_soft_loss_of_a_zero_adapter_on_its_own_teacher_is_zero(loaded, toy_jsonl, distribution):
    """Teacher without demos = the fresh student: batched, right-aligned soft loss vanishes, and is positive once LoRA
    moves."""
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = [encoder.encode(task.examples[i]).prompt for i in range(9)]
    teacher = targets.collect(
        model, Tap(model), tok, prompts, CollectSettings(max_new_tokens=3, batch_size=3, distribution=distribution)
    )
    ids = teacher.top_ids or [None] * len(prompts)
    items = [Item(p, t, None, i, lp) for p, t, i, lp in zip(prompts, teacher.tokens, ids, teacher.top_logp)]
    student = adapters.fresh(model, "lora", seed=0)
    tap, cfg = Tap(student), TrainConfig()
    with torch.no_grad():
        assert abs(loop.batch_loss(loop.Objective(student, tap, SOFT, cfg, tok.pad_token_id), items).item()) < 1e-5
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
        assert loop.batch_loss(loop.Objective(student, tap, SOFT, cfg, tok.pad_token_id), items).item() > 1e-4
        with pytest.raises(IA2Error, match="distribution"):
            loop.batch_loss(
                loop.Objective(student, tap, SOFT, cfg, tok.pad_token_id),
                [Item(p, t) for p, t in zip(prompts, teacher.tokens)],
            )


@pytest.mark.parametrize("distribution", [0, 5])
def test_soft_training_lowers_dev_kl(loaded, toy_jsonl, distribution):
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    indices = list(range(12))
    prompts = icl_prompts(task, encoder, indices, indices[:8], k=4)
    teacher = targets.collect(
        model, Tap(model), tok, prompts, CollectSettings(max_new_tokens=2, distribution=distribution)
    )
    plain = [encoder.encode(task.examples[i]).prompt for i in indices]
    ids = teacher.top_ids or [None] * len(plain)
    items = [Item(p, t, None, i, lp) for p, t, i, lp in zip(plain, teacher.tokens, ids, teacher.top_logp)]
    student = adapters.fresh(model, "lora", seed=0)
    cfg = TrainConfig(lr=1e-2, train_batch_size=4, max_epochs=4, eval_every=2, patience=4)
    log = loop.train_stage(student, Tap(student), items[:8], items[8:], SOFT, cfg, seed=0, pad_id=tok.pad_token_id)
    assert log["stage"] == "soft:icl"
    assert log["history"][0]["dev_loss"] > 0
    assert log["best_dev_loss"] < 0.9 * log["history"][0]["dev_loss"]
