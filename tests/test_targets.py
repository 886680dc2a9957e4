"""Teacher targets: answers and activations at the positions producing them, the student's alignment, the cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import full_attn_outputs, icl_prompts, overwrite_in_place, toy_task_and_encoder
from ia2.config import TrainConfig
from ia2.model import adapters, forward_pass, generation, loading
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training import loop, losses
from ia2.training.loop import Item
from ia2.training.methods import Stage

IA2 = Stage("ia2", "icl")


def _plain_prompts_sorted(task, encoder, n=9):
    prompts = [encoder.encode(task.examples[i]).prompt for i in range(n)]
    assert len({len(p) for p in prompts}) > 1, "the toy task should give prompts of different lengths (padding)"
    return sorted(prompts, key=len)


def test_zero_demos_teacher_equals_fresh_student_and_ia2_loss_is_zero(loaded, toy_jsonl):
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = _plain_prompts_sorted(task, encoder)
    teacher = targets.collect(model, Tap(model), tok, prompts, CollectSettings(batch_size=len(prompts)))

    student = adapters.fresh(model, "lora", seed=0)
    tap = Tap(student)
    assert any("lora_" in n for n, _ in student.named_parameters())
    batch = forward_pass.make_batch(prompts, teacher.tokens, tok.pad_token_id)
    with torch.no_grad():
        _, acts = forward_pass.forward(student, batch, tap)
    for row, act in enumerate(teacher.acts):
        assert act.shape == (model.config.num_hidden_layers, 1, model.config.hidden_size)
        assert torch.equal(acts[row, :, -act.shape[1] :], act)

    items = [Item(p, t, a) for p, t, a in zip(prompts, teacher.tokens, teacher.acts)]
    cfg = TrainConfig()
    with torch.no_grad():
        loss = loop.batch_loss(loop.Objective(student, tap, IA2, cfg, tok.pad_token_id), items)
    assert loss.item() == 0.0

    # the same comparison is sensitive: a non-zero adapter makes the loss positive
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
        assert loop.batch_loss(loop.Objective(student, tap, IA2, cfg, tok.pad_token_id), items).item() > 0


@pytest.mark.parametrize("max_new_tokens", [1, 3])
def test_teacher_and_student_positions_match_unpadded_runs(loaded, toy_jsonl, max_new_tokens):
    """Teacher acts sit at len(prompt)-1+t of ICL prompt ⊕ answer; the student's at the same offsets of plain
    prompts."""
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    indices, pool = list(range(6)), list(range(12))
    prompts = icl_prompts(task, encoder, indices, pool, k=3)
    assert len({len(p) for p in prompts}) > 1
    teacher = targets.collect(
        model, Tap(model), tok, prompts, CollectSettings(max_new_tokens=max_new_tokens, batch_size=4)
    )
    L, H = model.config.num_hidden_layers, model.config.hidden_size
    if max_new_tokens > 1:
        assert any(len(a) > 1 for a in teacher.tokens), "multi-token answers should be exercised"

    for p, answer, act in zip(prompts, teacher.tokens, teacher.acts):
        assert 1 <= len(answer) <= max_new_tokens
        assert act.shape == (L, len(answer), H)
        full, logits = full_attn_outputs(model, p + answer)
        # greedy: each answer token is the argmax at the position producing it
        assert logits[len(p) - 1 : len(p) - 1 + len(answer)].argmax(-1).tolist() == answer
        for t in range(len(answer)):
            torch.testing.assert_close(act[:, t], full[:, len(p) - 1 + t], rtol=1e-5, atol=1e-5)

    # student: plain prompts ⊕ teacher answer[:-1], answer-producing positions are the last |answer| ones
    plain = [encoder.encode(task.examples[i]).prompt for i in indices]
    batch = forward_pass.make_batch(plain, teacher.tokens, tok.pad_token_id)
    tap = Tap(model)
    with torch.no_grad():
        _, acts = forward_pass.forward(model, batch, tap)
    expected_loss_terms = torch.zeros(L)
    n_positions = 0
    for row, (p, answer, target) in enumerate(zip(plain, teacher.tokens, teacher.acts)):
        full, _ = full_attn_outputs(model, p + answer[:-1])
        mine = acts[row, :, acts.shape[2] - len(answer) :]
        torch.testing.assert_close(mine, full[:, -len(answer) :], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine, full[:, len(p) - 1 : len(p) - 1 + len(answer)], rtol=1e-5, atol=1e-5)
        expected_loss_terms += ((full[:, -len(answer) :] - target) ** 2).sum(dim=(1, 2))
        n_positions += len(answer)
    # and the IA2 loss is Σ_layers mean over (answer position, hidden) of the squared difference
    expected = (expected_loss_terms / (n_positions * H)).sum()
    items = [Item(p, a, t) for p, a, t in zip(plain, teacher.tokens, teacher.acts)]
    with torch.no_grad():
        got = loop.batch_loss(loop.Objective(model, tap, IA2, TrainConfig(), tok.pad_token_id), items)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_batched_cached_generation_equals_one_by_one_and_uncached_greedy(loaded, toy_jsonl):
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, list(range(6)), list(range(12)), k=2)
    batched = generation.generate(model, tok, prompts, 3, "\n\n")
    alone = [generation.generate(model, tok, [p], 3, "\n\n")[0] for p in prompts]
    assert batched == alone
    assert any(len(a) > 1 for a in batched)
    eos = tok.eos_token_id
    for p, got in zip(prompts, batched):
        # greedy decoding without any cache, cut after EOS or the token completing "\n\n"
        ids, want = list(p), []
        with torch.no_grad():
            for _ in range(3):
                nxt = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
                ids.append(nxt)
                want.append(nxt)
                if nxt == eos or "\n\n" in tok.decode(want):
                    break
        assert got == want


def test_cut_stops_at_eos_or_separator(loaded):
    _, tok = loaded
    yes, nl2, eos = tok.convert_tokens_to_ids(["Ġyes", "ĊĊ", "<eos>"])
    no = tok.convert_tokens_to_ids("Ġno")
    assert generation._cut([yes, nl2, no], tok, "\n\n", {eos}) == [yes, nl2]
    assert generation._cut([yes, eos, no], tok, "\n\n", {eos}) == [yes, eos]
    assert generation._cut([yes, no, yes], tok, "\n\n", {eos}) == [yes, no, yes]


def test_a_row_stops_as_alone_when_its_prompt_ends_with_part_of_the_stop_string(loaded):
    """A prompt ending in "\n" and stop "\n\n": the first generated "\n" completes the stop string only across the
    prompt's end, which does not count. Alone or batched with a longer prompt (so padded), the row is the same."""
    model, tok = loaded
    newline = tok.convert_tokens_to_ids("Ċ")
    bias = torch.zeros(len(tok))
    bias[newline] = 1e4  # the model always writes "\n"
    short, long = tok("Answer:\n")["input_ids"], tok("Question: is the sad happy horse quiet?\nAnswer:")["input_ids"]
    assert short[-1] == newline
    handle = model.lm_head.register_forward_hook(lambda m, a, o: o + bias)
    try:
        alone = generation.generate(model, tok, [short], 5, "\n\n")
        batched = generation.generate(model, tok, [long, short], 5, "\n\n")
    finally:
        handle.remove()
    assert alone == [[newline, newline]]
    assert batched == [[newline, newline], alone[0]]


def test_cached_collect_writes_then_reuses(loaded, toy_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    model, tok = loaded
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, list(range(5)), list(range(10)), k=2)
    tap = Tap(model)
    fields = {"model": targets.model_fingerprint(model), "task": task.name, "seed": 0}

    first = targets.cached_collect(model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2))
    files = list((tmp_path / "cache" / "targets").glob("*.safetensors"))
    assert len(files) == 1
    mtime = os.stat(files[0]).st_mtime_ns

    calls = []
    real = targets.collect
    monkeypatch.setattr(targets, "collect", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = targets.cached_collect(model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2))
    assert calls == [], "the second call must load the cached file, not recompute"
    assert os.stat(files[0]).st_mtime_ns == mtime

    fresh = real(model, tap, tok, prompts, CollectSettings(max_new_tokens=2))
    assert second.tokens == fresh.tokens == first.tokens
    for a, b in zip(second.acts, fresh.acts):
        assert a.dtype == b.dtype and torch.equal(a, b)

    # any change of a field, the stop rule, T or the prompts makes a new key
    full = {**fields, "site": "attn", "max_new_tokens": 2, "stop": "\n\n"}
    key = targets.cache_key(full, prompts)
    assert targets.cache_key({**full, "seed": 1}, prompts) != key
    assert targets.cache_key({**full, "max_new_tokens": 1}, prompts) != key
    assert targets.cache_key(full, prompts[:-1]) != key
    assert targets.cache_key(dict(reversed(list(full.items()))), prompts) == key
    targets.cached_collect(model, tap, tok, prompts, {**fields, "seed": 1}, CollectSettings(max_new_tokens=2))
    assert len(list((tmp_path / "cache" / "targets").glob("*.safetensors"))) == 2
    assert calls == [1]


def _drop_one_tensor(path):
    """Rewrite a targets file without its last example's answer tokens, its metadata (n) unchanged."""
    with safe_open(str(path), framework="pt") as handle:
        data, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    del data[f"tokens.{int(metadata['n']) - 1}"]
    save_file(data, str(path), metadata=metadata)


def cached_once(llama_dir, toy_jsonl, tmp_path, monkeypatch) -> tuple[tuple, targets.Targets, Path]:
    """Collect targets once into a private cache: (the collection's arguments, the targets, the cached file)."""
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    model, tok = loading.load(str(llama_dir))
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = icl_prompts(task, encoder, list(range(4)), list(range(8)), k=2)
    args = (model, Tap(model), tok, prompts, {"seed": 0})
    first = targets.cached_collect(*args, CollectSettings(max_new_tokens=2))
    [path] = (tmp_path / "cache" / "targets").glob("*.safetensors")
    return args, first, path


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(p.read_bytes()[:-100]), lambda p: p.write_bytes(b""), _drop_one_tensor],
    ids=["truncated", "empty", "tensor-missing"],
)
def test_corrupt_cached_file_is_recomputed(llama_dir, toy_jsonl, tmp_path, monkeypatch, caplog, damage):
    args, first, path = cached_once(llama_dir, toy_jsonl, tmp_path, monkeypatch)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="ia2.teacher.targets"):
        again = targets.cached_collect(*args, CollectSettings(max_new_tokens=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"cached targets at {path} are corrupt" in warnings[0] and "\n" not in warnings[0]
    assert again.tokens == first.tokens and all(torch.equal(a, b) for a, b in zip(again.acts, first.acts))
    reread = targets.load(path)
    assert reread.tokens == first.tokens, "the bad entry is replaced by a good one"


def test_a_cached_file_overwritten_in_place_is_found_by_its_checksum(
    llama_dir, toy_jsonl, tmp_path, monkeypatch, caplog
):
    args, first, path = cached_once(llama_dir, toy_jsonl, tmp_path, monkeypatch)
    size = path.stat().st_size
    overwrite_in_place(path)
    assert path.stat().st_size == size
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()), "setup: the damaged file still reads"
    with caplog.at_level(logging.WARNING, logger="ia2.teacher.targets"):
        again = targets.cached_collect(*args, CollectSettings(max_new_tokens=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"cached targets at {path} are corrupt (content checksum" in warnings[0]
    assert again.tokens == first.tokens and all(torch.equal(a, b) for a, b in zip(again.acts, first.acts))
    reread = targets.load(path)
    assert reread.tokens == first.tokens and all(torch.equal(a, b) for a, b in zip(reread.acts, first.acts))


def test_fingerprint_changes_with_weights(loaded):
    model, _ = loaded
    before = targets.model_fingerprint(model)
    assert targets.model_fingerprint(model) == before
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1.0
    assert targets.model_fingerprint(model) != before


def test_fingerprint_ignores_where_the_model_folder_is(llama_dir, tmp_path):
    """The same model copied to two folders (as moving $IA2_CACHE does) keeps its fingerprint, hence its cache keys."""
    model, tok = loading.load(str(llama_dir))
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name / "model")
        tok.save_pretrained(tmp_path / name / "model")
    first, second = (loading.load(str(tmp_path / name / "model"))[0] for name in ("a", "b"))
    assert first.config._name_or_path != second.config._name_or_path
    assert targets.model_fingerprint(first) == targets.model_fingerprint(second) == targets.model_fingerprint(model)
    with torch.no_grad():
        second.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    assert targets.model_fingerprint(second) != targets.model_fingerprint(first)


def test_losses_by_hand():
    # ce: two rows, the first with a masked (padding) position
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[1.0, 3.0], [0.0, 1.0]]])
    tgt = torch.tensor([[1, 0], [1, 1]])
    mask = torch.tensor([[False, True], [True, True]])
    ln = torch.log
    want = (
        -(
            ln(torch.tensor(torch.e**2 / (torch.e**2 + 1)))
            + ln(torch.tensor(torch.e**3 / (torch.e + torch.e**3)))
            + ln(torch.tensor(torch.e / (1 + torch.e)))
        )
        / 3
    )
    torch.testing.assert_close(losses.ce(logits, tgt, mask), want)
    # ia2: one row, 2 layers, 2 positions (first masked), hidden 2
    acts = torch.tensor([[[[9.0, 9.0], [1.0, 2.0]], [[9.0, 9.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, 4.0]]]])
    m = torch.tensor([[False, True]])
    # layer 0: (1 + 4)/2 = 2.5; layer 1: (9 + 16)/2 = 12.5; sum = 15
    torch.testing.assert_close(losses.ia2(acts, target, m), torch.tensor(15.0))
    # per-layer norm: layer 0 target mean square 0 -> clamped; layer 1: 12.5 / 12.5 = 1
    normed = losses.ia2(acts[:, 1:], target[:, 1:], m, per_layer_norm=True)
    torch.testing.assert_close(normed, torch.tensor(1.0))
    torch.testing.assert_close(losses.joint(torch.tensor(2.0), torch.tensor(4.0), 0.25), torch.tensor(2.5))
