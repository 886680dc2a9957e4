"""Several processes: two CPU processes on gloo against one, for the exchanges, collection, scoring, generation,
training and a whole run, data-parallel and with the base model sharded (FSDP2, `--fsdp`), and packed training
(LoRA and IA3 on every tiny architecture) against one adapter at a time; only the main process writes, each file once.

Tolerance: batches of collection, scoring, generation and dev loss are computed whole by one process each, so those
numbers are identical (under FSDP up to rounding, FORWARD_ATOL: measured at most 9.5e-7, with identical tokens); a
training step splits its batch across processes, so adapter weights match to 1e-4 (measured: at most 1.1e-5, one
element where Adam divides a near-zero gradient by its own square root; typically below 1e-6) and metrics to 1e-5
(measured: at most 5e-7), with the same accuracies, steps and early stops.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from conftest import ARCHS, small_run, toy_rows, toy_task_and_encoder, write_jsonl
from ia2 import config, paths
from ia2.commands import cli
from ia2.config import TrainConfig
from ia2.errors import IA2Error
from ia2.evaluation import cache, scoring
from ia2.model import adapters, distributed, generation, loading
from ia2.model.taps import Tap
from ia2.reporting import plots
from ia2.teacher import store, target_files, targets
from ia2.teacher.store import resolve
from ia2.teacher.targets import CollectSettings
from ia2.training.loop import Item, Lane, adapter_state, train_lanes, train_stage
from ia2.training.methods import Stage

METHODS = "zero-shot,icl,sft,ia2,ia2-sft"
WEIGHTS_ATOL = 1e-4
METRICS_ATOL = 1e-5
WRITERS = (paths, target_files, store, adapters, loading, plots, cache)
PARALLEL = ("two", "fsdp")
KINDS = ("lora", "ia3")
# Under FSDP a layer runs on weights gathered into fresh, differently aligned memory (the loaded ones are mapped from
# the safetensors file), and BLAS rounds some products differently: one process with aligned copies of its weights
# computes exactly what FSDP does.
FORWARD_ATOL = {"two": 0.0, "fsdp": 1e-5}


def run_argv(model: Path, task: Path, out: Path) -> list[str]:
    """A small run whose batches split unevenly over two processes (training 3 + 1, test 4 + 4 + 2)."""
    return small_run(model, f"jsonl:{task}", out, methods=METHODS, max_epochs=3, train_batch_size=3, batch_size=4)


def recording(log: list[str]):
    """An `atomic_path` that notes every target before writing it."""
    real = paths.atomic_path

    @contextmanager
    def record(target: Path):
        log.append(str(target))
        with real(target) as tmp:
            yield tmp

    return record


def load_model(model_dir: Path, fsdp: bool):
    """The tiny model and its tokenizer, its weights sharded over the processes with `fsdp`."""
    model, tok = loading.load(str(model_dir))
    if fsdp:
        distributed.shard_model(model, "cpu")
    return model, tok


def held(model) -> int:
    """How many weight elements this process holds (its shards of the sharded ones)."""
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())


def probe(model_dir: Path, task_path: Path, fsdp: bool = False) -> dict:
    """Scores, generations, shard-stored teacher targets and a --per-layer-norm IA2 stage on a tiny model."""
    model, tok = load_model(model_dir, fsdp)
    task, encoder = toy_task_and_encoder(task_path, tok, model)
    ex, tap = task.examples, Tap(model)
    plain = [encoder.encode(ex[i]).prompt for i in range(10)]
    shared = [encoder.encode(ex[i], [ex[d] for d in (20, 21, 22)]).prompt for i in range(10)]
    out = {}
    for name, prompts in (("plain", plain), ("shared", shared)):
        scores = scoring.score(model, prompts, encoder.label_ids, tok.pad_token_id, tap, batch_size=3)
        out[name] = dict(vars(scores))
    out["generated"] = generation.generate_texts(model, tok, plain, replace(task, max_new_tokens=3), batch_size=3)
    teacher = targets.cached_collect(
        model,
        tap,
        tok,
        shared,
        {"model": "probe"},
        CollectSettings(max_new_tokens=2, batch_size=3, distribution=4),
        store="shards",
    )
    out["teacher"] = [teacher.tokens] + [
        [resolve(t) for t in getattr(teacher, name)] for name in ("acts", "top_ids", "top_logp")
    ]
    model = adapters.fresh(model, "lora", 0)
    items = [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)]
    cfg = TrainConfig(train_batch_size=3, max_epochs=2, eval_every=1, per_layer_norm=True)
    out["log"] = train_stage(model, tap, items[:7], items[7:], Stage("ia2", "icl"), cfg, 0, tok.pad_token_id)
    out["adapter"] = adapter_state(model)
    return out


def uneven(model_dir: Path, task_path: Path, fsdp: bool = False) -> dict:
    """Work that leaves the second process without a batch (three batches; a last round of one; a step of one
    example): prefix-cached scores, generations and teacher answers that stop at different steps, and an IA3 stage
    against the online teacher."""
    model, tok = load_model(model_dir, fsdp)
    task, encoder = toy_task_and_encoder(task_path, tok, model)
    ex, tap = task.examples, Tap(model)
    plain = [encoder.encode(ex[i]).prompt for i in range(5)]
    shared = [encoder.encode(ex[i], [ex[d] for d in (20, 21, 22)]).prompt for i in range(5)]
    out = {"held": held(model), "sharded": distributed.sharded(model)}
    out["scores"] = dict(vars(scoring.score(model, shared, encoder.label_ids, tok.pad_token_id, tap, batch_size=2)))
    out["generated"] = generation.generate_texts(model, tok, plain, replace(task, max_new_tokens=8), batch_size=2)
    out["teacher"] = targets.cached_collect(
        model, None, tok, shared, {"model": "uneven"}, CollectSettings(max_new_tokens=8, batch_size=2), store="shards"
    ).tokens
    model = adapters.fresh(model, "ia3", 0)
    items = [Item(p, t, icl_prompt=s) for p, t, s in zip(plain, out["teacher"], shared)]
    cfg = TrainConfig(lr=1e-2, train_batch_size=3, max_epochs=2, eval_every=1)
    out["log"] = train_stage(model, tap, items[:4], items[4:], Stage("ia2", "icl"), cfg, 0, tok.pad_token_id)
    out["adapter"] = adapter_state(model)
    return out


def packed(model_dir: Path, task_path: Path, kind: str, alone: bool = False) -> dict:
    """Three adapters of `kind` (seeds 0-2, two learning rates) on a --per-layer-norm IA2 stage, packed or one at a
    time: batches of 3 over 7 examples, so each step's rows of a lane split unevenly over two processes."""
    model, tok = load_model(model_dir, False)
    task, encoder = toy_task_and_encoder(task_path, tok, model)
    ex, tap = task.examples, Tap(model)
    plain = [encoder.encode(ex[i]).prompt for i in range(12)]
    shared = [encoder.encode(ex[i], [ex[d] for d in (20, 21, 22)]).prompt for i in range(12)]
    teacher = targets.collect(model, tap, tok, shared, CollectSettings(batch_size=4))
    items = [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)]
    lanes = []
    for seed, lr in ((0, 1e-2), (1, 1e-2), (2, 3e-3)):
        model = adapters.fresh(model, kind, seed)
        cfg = TrainConfig(lr=lr, train_batch_size=3, max_epochs=2, eval_every=1, per_layer_norm=True)
        lanes.append(Lane(items[seed : seed + 7], items[9:], cfg, seed, adapter_state(model)))
    stage = Stage("ia2", "icl")
    if alone:
        trained = [train_lanes(model, tap, [lane], stage, tok.pad_token_id)[0] for lane in lanes]
    else:
        trained = train_lanes(model, tap, lanes, stage, tok.pad_token_id)
    return {"logs": [log for log, _ in trained], "adapters": [state for _, state in trained]}


def primitives() -> dict:
    """What the exchanges return in this process."""
    mapped = list(distributed.map_batches(torch.nn.Identity(), list(range(5)), lambda x: (distributed.rank(), x * x)))
    flag = torch.tensor([distributed.rank() + 1.0, 2.0])
    distributed.all_reduce_sum_([flag])
    distributed.barrier()
    return {
        "world": distributed.world_size(),
        "main": distributed.is_main(),
        "map": mapped,
        "everyone": distributed.everyone(distributed.rank()),
        "from_main": distributed.from_main(distributed.rank()),
        "agree": distributed.agree(distributed.rank() == 0),
        "sum": flag.tolist(),
    }


def every_pack(archs: dict[str, Path], task: Path, alone: bool = False) -> dict:
    """`packed` for LoRA and IA3 on every tiny architecture."""
    return {f"{arch}-{kind}": packed(folder, task, kind, alone) for arch, folder in archs.items() for kind in KINDS}


def worker(rank: int, port: int, model: Path, task: Path, root: Path, mode: str, archs: dict[str, Path]) -> None:
    """One of two processes, set up as torchrun would: exchanges, the probes, then a whole run through the CLI, the
    model whole on each process (mode "two") or sharded over both ("fsdp")."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        IA2_CACHE=str(root / f"cache-{mode}"),
    )
    written: list[str] = []
    record = recording(written)
    for module in WRITERS:
        module.atomic_path = record
    fsdp = mode == "fsdp"
    result = {"primitives": primitives(), "probe": probe(model, task, fsdp), "uneven": uneven(model, task, fsdp)}
    result["packed"] = None if fsdp else every_pack(archs, task)
    result["code"] = cli.main(run_argv(model, task, root / mode) + (["--fsdp"] if fsdp else []))
    torch.save({**result, "written": written}, root / f"{mode}{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawned(root: Path, model: Path, task: Path, mode: str, archs: dict[str, Path]) -> list[dict]:
    """What each of two spawned processes returned."""
    processes, deadline = (
        mp.spawn(worker, args=(free_port(), model, task, root, mode, archs), nprocs=2, join=False),
        time.monotonic() + 600,
    )
    while not processes.join(timeout=5):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail(f"the two processes ({mode}) did not finish within 600 s")
    return [torch.load(root / f"{mode}{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dirs) -> dict:
    """The probes and run in one process (here), then in two spawned processes, data-parallel and with FSDP."""
    root = tmp_path_factory.mktemp("dist")
    task, model = write_jsonl(root / "toy.jsonl", toy_rows(40)), model_dirs["llama"]
    written: list[str] = []
    record = recording(written)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IA2_CACHE", str(root / "cache-one"))
        for module in WRITERS:
            patch.setattr(module, "atomic_path", record)
        one = {
            "primitives": primitives(),
            "probe": probe(model, task),
            "uneven": uneven(model, task),
            "alone": every_pack(dict(model_dirs), task, alone=True),
            "code": cli.main(run_argv(model, task, root / "one")),
        }
    parallel = {mode: spawned(root, model, task, mode, dict(model_dirs)) for mode in PARALLEL}
    return {"root": root, "one": {**one, "written": written}, **parallel}


def relative(written: list[str], root: Path, mode: str) -> list[str]:
    """Written paths with the run's folders named alike; a score cache entry's name left out, as FSDP keys its own
    (sharded weights round differently)."""
    paths = [w.replace(str(root / mode), "OUT").replace(str(root / f"cache-{mode}"), "CACHE") for w in written]
    return [re.sub(r"^CACHE/scores/[0-9a-f]+", "CACHE/scores/ENTRY", p) for p in paths]


def test_exchanges_in_one_process(runs):
    assert runs["one"]["primitives"] == {
        "world": 1,
        "main": True,
        "map": [(0, 0), (0, 1), (0, 4), (0, 9), (0, 16)],
        "everyone": [0],
        "from_main": 0,
        "agree": True,
        "sum": [1.0, 2.0],
    }
    assert distributed.device("auto") == loading.device("auto")


def test_exchanges_across_two_processes(runs):
    first, second = (r["primitives"] for r in runs["two"])
    for rank, got in enumerate((first, second)):
        assert got["world"] == 2 and got["main"] == (rank == 0)
        assert got["map"] == [(0, 0), (1, 1), (0, 4), (1, 9), (0, 16)], "batches alternate, results in batch order"
        assert got["everyone"] == [0, 1] and got["from_main"] == 0 and got["agree"] is False
        assert got["sum"] == [3.0, 4.0]


def same(a, b, atol: float = 0.0) -> bool:
    """Equality of nested results (tensors, arrays, lists, dicts), floating-point values within `atol`."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], atol) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        floating = a.is_floating_point() and a.shape == b.shape
        return torch.allclose(a, b, rtol=0, atol=atol) if floating and atol else torch.equal(a, b)
    if isinstance(a, np.ndarray):
        floating = np.issubdtype(a.dtype, np.floating) and a.shape == b.shape
        return np.allclose(a, b, rtol=0, atol=atol) if floating and atol else np.array_equal(a, b)
    return abs(a - b) <= atol if isinstance(a, float) else a == b


def test_fsdp_shards_the_model(runs):
    """Under --fsdp each process holds its share of every weight, together exactly the model; otherwise all of it."""
    one, two, fsdp = runs["one"]["uneven"], [r["uneven"] for r in runs["two"]], [r["uneven"] for r in runs["fsdp"]]
    assert not one["sharded"] and not any(r["sharded"] for r in two) and all(r["sharded"] for r in fsdp)
    assert [r["held"] for r in two] == [one["held"]] * 2
    assert sum(r["held"] for r in fsdp) == one["held"] and max(r["held"] for r in fsdp) < 0.51 * one["held"]


@pytest.mark.parametrize("mode", PARALLEL)
def test_collection_scoring_and_generation_are_identical(runs, mode):
    """Each batch is computed whole by one process, so every process returns exactly what one process computes (under
    FSDP up to rounding, FORWARD_ATOL); under FSDP a process without a batch runs a dummy one, and generation goes on
    until every process is done."""
    one, atol = runs["one"], FORWARD_ATOL[mode]
    for two in runs[mode]:
        for name in ("plain", "shared", "generated", "teacher"):
            assert same(one["probe"][name], two["probe"][name], atol), name
        for name in ("scores", "generated", "teacher"):
            assert same(one["uneven"][name], two["uneven"][name], atol), name


def assert_trained_alike(one: dict, two: list[dict]) -> None:
    """Both processes hold the same adapter, one process's within tolerance, after the same steps and dev losses."""
    first, second = two
    assert same(first["adapter"], second["adapter"]), "every process holds the same adapter"
    for name, weight in one["adapter"].items():
        torch.testing.assert_close(first["adapter"][name], weight, atol=WEIGHTS_ATOL, rtol=0)
    assert [h["step"] for h in first["log"]["history"]] == [h["step"] for h in one["log"]["history"]]
    assert first["log"]["best_step"] == one["log"]["best_step"]
    for got, want in zip(first["log"]["history"], one["log"]["history"]):
        assert got["dev_loss"] == pytest.approx(want["dev_loss"], abs=METRICS_ATOL)


@pytest.mark.parametrize("mode", PARALLEL)
def test_training_matches_one_process(runs, mode):
    """A --per-layer-norm IA2 stage whose batches (3, 3, 1) split across two processes, the last leaving one idle,
    and an IA3 stage against the online teacher (batches 3, 1; one dev example)."""
    for probe_name in ("probe", "uneven"):
        assert_trained_alike(runs["one"][probe_name], [r[probe_name] for r in runs[mode]])


@pytest.mark.parametrize("pack", [f"{arch}-{kind}" for arch in ARCHS for kind in KINDS])
def test_packed_training_over_two_processes_matches_one_at_a_time(runs, pack):
    """Three adapters packed in one pass, their rows split over two processes, train as each trains alone in one
    process."""
    one = runs["one"]["alone"][pack]
    two = [r["packed"][pack] for r in runs["two"]]
    assert same(two[0], two[1]), "every process holds the same adapters and logs"
    for lane, (log, state) in enumerate(zip(one["logs"], one["adapters"])):
        assert_trained_alike(
            {"log": log, "adapter": state}, [{"log": t["logs"][lane], "adapter": t["adapters"][lane]} for t in two]
        )
        assert [h["step"] for h in two[0]["logs"][lane]["history"]] == [h["step"] for h in log["history"]]


@pytest.mark.parametrize("mode", PARALLEL)
def test_run_matches_one_process(runs, mode):
    root = runs["root"]
    assert runs["one"]["code"] == 0 and [r["code"] for r in runs[mode]] == [0, 0]
    one, two = (json.loads((root / out / "results.json").read_text())["rows"] for out in ("one", mode))
    assert [(r["seed"], r["method"]) for r in one] == [(r["seed"], r["method"]) for r in two]
    for a, b in zip(one, two):
        assert a["accuracy"] == b["accuracy"] and a.get("dev_accuracy") == b.get("dev_accuracy"), a["method"]
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=METRICS_ATOL), (a["method"], key)
    for method in ("sft", "ia2", "ia2-sft"):
        folder = Path("adapters") / "seed0" / method / "adapter_model.safetensors"
        a, b = load_file(str(root / "one" / folder)), load_file(str(root / mode / folder))
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=WEIGHTS_ATOL, rtol=0)
    logs = [json.loads((root / out / "train_logs.json").read_text()) for out in ("one", mode)]
    assert [[(s["steps"], s["best_step"]) for s in e["stages"]] for e in logs[0]] == [
        [(s["steps"], s["best_step"]) for s in e["stages"]] for e in logs[1]
    ]
    (file_one,), (file_two,) = ((root / f"cache-{out}" / "targets").glob("*.safetensors") for out in ("one", mode))
    assert same(load_file(str(file_one)), load_file(str(file_two)), FORWARD_ATOL[mode]), "teacher targets are identical"


def test_fsdp_adapter_loads_whole(runs, model_dirs):
    """Under FSDP the main process saves the whole adapter in PEFT format: it loads onto the unsharded model and holds
    one process's weights."""
    folder = Path("adapters") / "seed0" / "ia2"
    base, _ = loading.load(str(model_dirs["llama"]))
    reloaded = get_peft_model_state_dict(PeftModel.from_pretrained(base, str(runs["root"] / "fsdp" / folder)))
    saved = load_file(str(runs["root"] / "one" / folder / "adapter_model.safetensors"))
    assert reloaded.keys() == saved.keys()
    for name, weight in saved.items():
        torch.testing.assert_close(reloaded[name], weight, atol=WEIGHTS_ATOL, rtol=0)


@pytest.mark.parametrize("mode", PARALLEL)
def test_only_the_main_process_writes_each_file_once(runs, mode):
    root = runs["root"]
    main, other = (r["written"] for r in runs[mode])
    assert other == []
    assert len(set(main)) == len(main)
    assert relative(main, root, mode) == relative(runs["one"]["written"], root, "one")


def test_fsdp_needs_a_launcher(llama_dir, toy_jsonl, tmp_path, capsys):
    code = cli.main(
        ["run", "--model", str(llama_dir), "--task", f"jsonl:{toy_jsonl}", "--out", str(tmp_path), "--fsdp"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--fsdp shards the model over several processes" in err


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"adapter": "prompt"}, "^fsdp supports LORA and IA3 adapters, not PROMPT_TUNING"),
        ({"adapter": "prefix"}, "not PREFIX_TUNING"),
        ({"merge_bf16": True}, "^merge_bf16 merges the adapter into a whole copy"),
    ],
)
def test_fsdp_rejects_what_it_cannot_shard(change, needle):
    """Checked from the config alone, whatever the launcher: no process count is needed to know it."""
    with pytest.raises(IA2Error, match=needle):
        config.make("m", "t", methods=["sft"], fsdp=True, **change)


def test_launcher_checks_run_once_at_start_up(monkeypatch):
    cfg = config.make("m", "t", methods=["sft"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(IA2Error, match="give ia2 --fsdp"):
        distributed.check_launch(cfg)
