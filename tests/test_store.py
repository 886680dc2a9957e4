"""Teacher targets that scale: bf16 shards on disk read back per batch, and the online teacher that stores none."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import icl_prompts, overwrite_in_place, small_run, toy_rows, toy_task_and_encoder, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.config import TrainConfig
from ia2.errors import IA2Error
from ia2.model import adapters, loading
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.teacher.store import Stored, TargetStore
from ia2.teacher.targets import CollectSettings
from ia2.training import loop
from ia2.training.loop import Item
from ia2.training.methods import Stage

IA2 = Stage("ia2", "icl")
N, N_TRAIN, SHARD = 64, 48, 8


@pytest.fixture(scope="module")
def toy64(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data64") / "toy.jsonl", toy_rows(N + 8))


def _prompts(folder: Path, task_path: Path, n: int = N):
    """(model, tokenizer, ICL prompts, plain prompts) for n toy queries with 2 demos from the first 8 examples."""
    model, tok = loading.load(str(folder))
    task, encoder = toy_task_and_encoder(task_path, tok, model)
    queries = list(range(8, 8 + n))
    plain = [encoder.encode(task.examples[i]).prompt for i in queries]
    return model, tok, icl_prompts(task, encoder, queries, list(range(8)), k=2), plain


def _train(model, items: list[Item], cfg: TrainConfig) -> tuple[dict, dict]:
    """An IA2 stage on a fresh seeded LoRA (replacing the model's earlier one): (log, adapter state)."""
    peft = adapters.fresh(model, "lora", 0)
    log = loop.train_stage(
        peft, Tap(peft), items[:N_TRAIN], items[N_TRAIN:], IA2, cfg, seed=0, pad_id=peft.config.pad_token_id
    )
    return log, loop.adapter_state(peft)


def test_store_keeps_what_collect_returns(model_dirs, toy64, tmp_path):
    """Shards of at most 8 examples (or of a byte budget), one index; fp32 tensors bit-identical, bf16 the cast."""
    model, tok, prompts, _ = _prompts(model_dirs["llama"], toy64, 20)
    tap = Tap(model)
    want = targets.collect(model, tap, tok, prompts, CollectSettings(max_new_tokens=3, batch_size=4, distribution=5))
    for dtype, size, budget in (("float32", SHARD, 1 << 30), ("bfloat16", 100, 3000)):
        folder = tmp_path / dtype
        targets.write_store(
            folder,
            targets.rows(model, tap, tok, prompts, CollectSettings(3, "\n\n", 4, "t", 5)),
            len(prompts),
            {"seed": 0},
            dtype,
            size,
            budget,
        )
        index = json.loads((folder / "index.json").read_text())
        assert sorted(p.name for p in folder.iterdir()) == sorted(index["shards"] + ["index.json"])
        assert len(index["shards"]) > 1 and index["dtype"] == dtype and index["fields"] == {"seed": 0}
        assert not list(tmp_path.glob(f".{dtype}.*")), "the atomic write leaves no temporary folder"
        for shard in index["shards"]:
            with safe_open(str(folder / shard), framework="pt") as f:
                assert len([k for k in f.keys() if k.startswith("acts.")]) <= size
        got = targets.open_store(folder)
        assert got.tokens == want.tokens and isinstance(got.acts[0], Stored)
        for name in ("acts", "top_ids", "top_logp"):
            for lazy, tensor in zip(getattr(got, name), getattr(want, name)):
                expected = tensor.to(torch.bfloat16) if name == "acts" and dtype == "bfloat16" else tensor
                assert torch.equal(lazy.load(), expected) and lazy.load().dtype == expected.dtype


def test_soft_loss_reads_stored_distributions(model_dirs, toy64, tmp_path):
    model, tok, prompts, plain = _prompts(model_dirs["llama"], toy64, 8)
    tap = Tap(model)
    want = targets.collect(model, tap, tok, prompts, CollectSettings(max_new_tokens=3, distribution=5))
    targets.write_store(
        tmp_path / "s", targets.rows(model, tap, tok, prompts, CollectSettings(3, distribution=5)), 8, {}, "bfloat16", 3
    )
    got = targets.open_store(tmp_path / "s")
    peft = adapters.fresh(model, "lora", 0)
    with torch.no_grad():
        for param in (p for n, p in peft.named_parameters() if "lora_B" in n):
            param.normal_(0, 0.1)
        losses = [
            loop.batch_loss(
                loop.Objective(peft, Tap(peft), Stage("soft", "icl"), TrainConfig(), tok.pad_token_id),
                [Item(p, t, None, i, lp) for p, t, i, lp in zip(plain, t.tokens, t.top_ids, t.top_logp)],
            )
            for t in (want, got)
        ]
    assert losses[0].item() > 0 and torch.equal(losses[0], losses[1])


def test_answers_only_store_has_no_activations(model_dirs, toy64, tmp_path):
    model, tok, prompts, _ = _prompts(model_dirs["llama"], toy64, 6)
    want = targets.collect(model, Tap(model), tok, prompts, CollectSettings(max_new_tokens=3))
    bare = targets.collect(model, None, tok, prompts, CollectSettings(max_new_tokens=3))
    assert bare.tokens == want.tokens and bare.acts == [None] * 6
    targets.write_store(tmp_path / "s", targets.rows(model, None, tok, prompts, CollectSettings(3)), 6, {})
    got = targets.open_store(tmp_path / "s")
    assert got.tokens == want.tokens and got.acts == [None] * 6 and got.top_logp is None


def test_training_from_shards_matches_memory_with_few_shards_open(model_dirs, toy64, tmp_path):
    """64 examples in 8 shards, at most 2 open: the same log and adapter as in-memory fp32 targets; bf16 shards
    give losses within bf16 rounding."""
    model, tok, prompts, plain = _prompts(model_dirs["llama"], toy64)
    tap = Tap(model)
    teacher = targets.collect(model, tap, tok, prompts)
    for dtype in ("float32", "bfloat16"):
        targets.write_store(tmp_path / dtype, targets.rows(model, tap, tok, prompts), N, {}, dtype, SHARD)
    cfg = TrainConfig(lr=3e-3, train_batch_size=4, max_epochs=2, eval_every=4, patience=10)
    memory_log, memory_state = _train(
        model, [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)], cfg
    )
    logs = {}
    for dtype in ("float32", "bfloat16"):
        lazy = targets.open_store(tmp_path / dtype, max_open=2)
        store: TargetStore = lazy.acts[0].store
        assert len(store.index["shards"]) == N // SHARD
        logs[dtype], state = _train(model, [Item(p, t, a) for p, t, a in zip(plain, lazy.tokens, lazy.acts)], cfg)
        assert store.peak_open <= 2 and store.opens > N // SHARD, "shards are opened on demand and closed again"
        evals = len(logs[dtype]["history"])
        assert store.reads == 2 * N_TRAIN + evals * (N - N_TRAIN), "each example's tensor is read once per use"
        if dtype == "float32":
            assert logs[dtype] == memory_log
            assert all(torch.equal(state[k], memory_state[k]) for k in memory_state)
    for ours, theirs in zip(logs["bfloat16"]["history"], memory_log["history"]):
        assert ours["dev_loss"] == pytest.approx(theirs["dev_loss"], rel=5e-3)


def test_online_teacher_matches_cached_targets(model_dirs, toy64):
    """Activations computed per batch from ICL prompt ⊕ answer with the adapter disabled give the cached losses."""
    model, tok, prompts, plain = _prompts(model_dirs["llama"], toy64)
    answers = targets.collect(model, None, tok, prompts)
    teacher = targets.collect(model, Tap(model), tok, prompts)
    assert answers.tokens == teacher.tokens
    cfg = TrainConfig(lr=3e-3, train_batch_size=4, max_epochs=2, eval_every=4, patience=10)
    cached_log, _ = _train(model, [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)], cfg)
    online = [Item(p, t, icl_prompt=q) for p, t, q in zip(plain, answers.tokens, prompts)]
    online_log, _ = _train(model, online, cfg)
    model = adapters.fresh(model, "lora", 0)
    assert [h["step"] for h in online_log["history"]] == [h["step"] for h in cached_log["history"]]
    for ours, theirs in zip(online_log["history"], cached_log["history"]):
        assert ours.keys() == theirs.keys()
        assert ours == pytest.approx(theirs, abs=1e-5, rel=1e-5)
    with pytest.raises(IA2Error, match="needs teacher activations"):
        loop.batch_loss(
            loop.Objective(model, Tap(model), IA2, cfg, tok.pad_token_id),
            [Item(p, t) for p, t in zip(plain[:2], answers.tokens)],
        )


def test_online_teacher_with_multi_token_answers(model_dirs, toy64):
    """T > 1: the online targets of a batch equal the collected ones at every answer position."""
    model, tok, prompts, plain = _prompts(model_dirs["llama"], toy64, 8)
    teacher = targets.collect(model, Tap(model), tok, prompts, CollectSettings(max_new_tokens=3))
    assert len({len(t) for t in teacher.tokens}) > 1, "answers of different lengths exercise the masked positions"
    peft = adapters.fresh(model, "lora", 0)
    tap, keep = Tap(peft), max(len(t) for t in teacher.tokens)
    items = [Item(p, t, icl_prompt=q) for p, t, q in zip(plain, teacher.tokens, prompts)]
    got = loop.online_acts(peft, tap, items, tok.pad_token_id)
    assert got.shape[2] == keep
    for row, act in enumerate(teacher.acts):
        torch.testing.assert_close(got[row, :, keep - act.shape[1] :], act, rtol=1e-5, atol=1e-5)
    # the dev set's per-layer teacher scale, read in batches of 3, is the whole set's, online or stored
    cfg, stored = (
        TrainConfig(per_layer_norm=True, dev_batch_size=3),
        [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)],
    )
    want = loop.teacher_scale(stored, IA2, cfg)
    torch.testing.assert_close(
        loop.dev_scale(loop.Objective(peft, tap, IA2, cfg, tok.pad_token_id), stored), want, rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        loop.dev_scale(loop.Objective(peft, tap, IA2, cfg, tok.pad_token_id), items), want, rtol=1e-5, atol=0
    )


def test_cache_formats_are_interchangeable_and_default_keys_unchanged(model_dirs, toy64, tmp_path, monkeypatch):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    model, tok, prompts, _ = _prompts(model_dirs["llama"], toy64, 6)
    tap, fields = Tap(model), {"model": targets.model_fingerprint(model), "seed": 0}
    assert targets.key_fields(fields, tap, targets.CollectSettings(2, "\n\n")) == {
        **fields,
        "site": "attn",
        "max_new_tokens": 2,
        "stop": "\n\n",
    }
    root = tmp_path / "cache" / "targets"
    old = targets.cached_collect(model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2))
    calls = []
    monkeypatch.setattr(targets, "rows", lambda *a, **k: calls.append(1))
    reused = targets.cached_collect(model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2), store="shards")
    assert calls == [] and all(isinstance(a, torch.Tensor) for a in reused.acts), "an old single file is reused"
    monkeypatch.undo()
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    sharded = targets.cached_collect(
        model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2), dtype="bfloat16", store="shards"
    )
    key = targets.cache_key(targets.key_fields(fields, tap, targets.CollectSettings(2, "\n\n"), "bfloat16"), prompts)
    assert (root / key / "index.json").is_file() and sharded.tokens == old.tokens
    assert all(a.load().dtype == torch.bfloat16 for a in sharded.acts)
    monkeypatch.setattr(targets, "collect", lambda *a, **k: calls.append(1))
    again = targets.cached_collect(
        model, tap, tok, prompts, fields, CollectSettings(max_new_tokens=2), dtype="bfloat16"
    )
    assert calls == [] and isinstance(again.acts[0], Stored), "a store is reused when a file is asked for"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-50])


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: _truncate(f / "shard-00001.safetensors"),
        lambda f: overwrite_in_place(f / "shard-00001.safetensors"),
        lambda f: (f / "shard-00000.safetensors").unlink(),
        lambda f: (f / "index.json").write_text('{"n": 6, "shards": ['),
        lambda f: (f / "index.json").write_text(json.dumps({**json.loads((f / "index.json").read_text()), "n": 7})),
    ],
    ids=["truncated-shard", "overwritten-shard", "missing-shard", "truncated-index", "inconsistent-index"],
)
def test_corrupt_store_is_recomputed(model_dirs, toy64, tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(targets, "write_store", partial(targets.write_store, shard_size=4))
    model, tok, prompts, _ = _prompts(model_dirs["llama"], toy64, 6)
    args = (model, Tap(model), tok, prompts, {"seed": 0})
    targets.cached_collect(*args, CollectSettings(max_new_tokens=2), store="shards")
    [folder] = [p for p in (tmp_path / "cache" / "targets").iterdir() if not p.name.startswith(".")]
    assert len(json.loads((folder / "index.json").read_text())["shards"]) == 2
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="ia2.teacher.targets"):
        again = targets.cached_collect(*args, CollectSettings(max_new_tokens=2), store="shards")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"cached targets at {folder} are corrupt" in warnings[0] and "\n" not in warnings[0]
    fresh = targets.collect(*args[:4], CollectSettings(max_new_tokens=2))
    assert again.tokens == fresh.tokens and all(torch.equal(a.load(), b) for a, b in zip(again.acts, fresh.acts))


def test_bf16_file_returns_what_it_reloads(model_dirs, toy64, tmp_path, monkeypatch):
    """A fresh bf16 collection trains on the same tensors a resumed run reads back."""
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    model, tok, prompts, _ = _prompts(model_dirs["llama"], toy64, 4)
    args = (model, Tap(model), tok, prompts, {"seed": 0})
    first = targets.cached_collect(*args, dtype="bfloat16")
    second = targets.cached_collect(*args, dtype="bfloat16")
    assert all(a.dtype == torch.bfloat16 and torch.equal(a, b) for a, b in zip(first.acts, second.acts))


def test_run_config_validation():
    cfg = config.make("m", "t", methods=["ia2"])
    explicit = config.make(
        "m", "t", methods=["ia2"], teacher_mode="cached", target_dtype="float32", target_store="file"
    )
    assert config.key(explicit) == config.key(cfg), "defaults given explicitly keep the key"
    kept = config.make("m", "t", methods=["ia2"], save_adapters=False, fsdp=True, seeds=[4])
    assert config.key(kept) == config.key(cfg), "what is kept and how work is spread are not the configuration"
    for change, message in (
        ({"teacher_mode": "live"}, "^teacher_mode must be one of cached, online"),
        ({"target_dtype": "float16"}, "^target_dtype must be one of float32, bfloat16"),
        ({"target_store": "disk"}, "^target_store must be one of file, shards"),
        ({"teacher_mode": "online", "target_dtype": "bfloat16"}, "drop --target-dtype"),
    ):
        with pytest.raises(IA2Error, match=message):
            config.make("m", "t", methods=["ia2"], **change)
    args = cli.parser().parse_args(["run", "--model", "m", "--task", "t", "--teacher-mode", "online"])
    assert cli.config_from_args(args)[0].teacher.teacher_mode == "online"
    args = cli.parser().parse_args(
        ["run", "--model", "m", "--task", "t", "--target-dtype", "bfloat16", "--target-store", "shards"]
    )
    got = cli.config_from_args(args)[0].teacher
    assert (got.target_dtype, got.target_store, got.teacher_mode) == ("bfloat16", "shards", "cached")


def _run(model: Path, task: Path, out: Path, cache: Path, extra: list[str]) -> list[dict]:
    argv = small_run(model, f"jsonl:{task}", out, methods="ia2,ia2-sft", max_epochs=2) + extra
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_CACHE", str(cache))
        assert cli.main(argv) == 0
    return json.loads((out / "results.json").read_text())["rows"]


def test_runs_with_shards_and_online_teacher(model_dirs, tmp_path):
    """fp32 shards give the default run's rows exactly; the online teacher stores no activations."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    model = model_dirs["llama"]
    numbers = ("accuracy", "nll", "asim")
    default = _run(model, task, tmp_path / "a", tmp_path / "ca", [])
    shards = _run(model, task, tmp_path / "b", tmp_path / "cb", ["--target-store", "shards"])
    assert [[r[k] for k in numbers] for r in shards] == [[r[k] for k in numbers] for r in default]
    (folder,) = (tmp_path / "cb" / "targets").iterdir()
    assert (folder / "index.json").is_file()
    online = _run(model, task, tmp_path / "c", tmp_path / "cc", ["--teacher-mode", "online"])
    assert [r["method"] for r in online] == [r["method"] for r in default]
    (answers,) = (tmp_path / "cc" / "targets").glob("*.safetensors")
    with safe_open(str(answers), framework="pt") as f:
        assert f.keys() and not [k for k in f.keys() if k.startswith("acts.")]
