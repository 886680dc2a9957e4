"""Several processes: two CPU processes on gloo against one, for the exchanges, collection, scoring, generation,
training and a whole run; only the main process writes, each file once.

Tolerance: batches of collection, scoring, generation and dev loss are computed whole by one process each, so those
numbers are identical; a training step splits its batch across processes, so adapter weights match to 1e-4
(measured: at most 1.1e-5, one element where Adam divides a near-zero gradient by its own square root; typically
below 1e-6) and metrics to 1e-5 (measured: at most 5e-7), with the same accuracies, steps and early stops.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import toy_rows, toy_task_and_encoder, write_jsonl
from ia2 import adapters, cli, distributed, evaluate, models, paths, plots, store, targets
from ia2.methods import Stage
from ia2.store import resolve
from ia2.taps import Tap
from ia2.train import Item, TrainConfig, adapter_state, train_stage

METHODS = "zero-shot,icl,sft,ia2,ia2-sft"
WEIGHTS_ATOL = 1e-4
METRICS_ATOL = 1e-5
WRITERS = (paths, targets, store, adapters, models, plots)


def run_argv(model: Path, task: Path, out: Path) -> list[str]:
    """A small run whose batches split unevenly over two processes (training 3 + 1, test 4 + 4 + 2)."""
    return ["run", "--model", str(model), "--task", f"jsonl:{task}", "--methods", METHODS, "--n-train", "4",
            "--seeds", "0", "--n-test", "10", "--epochs", "3", "--train-batch-size", "3", "--batch-size", "4",
            "--out", str(out)]


def recording(log: list[str]):
    """An `atomic_path` that notes every target before writing it."""
    real = paths.atomic_path

    @contextmanager
    def record(target: Path):
        log.append(str(target))
        with real(target) as tmp:
            yield tmp

    return record


def probe(model_dir: Path, task_path: Path) -> dict:
    """Scores, generations, shard-stored teacher targets and a --per-layer-norm IA2 stage on a tiny model."""
    model, tok = models.load(str(model_dir))
    task, encoder = toy_task_and_encoder(task_path, tok, model)
    ex, tap = task.examples, Tap(model)
    plain = [encoder.encode(ex[i]).prompt for i in range(10)]
    shared = [encoder.encode(ex[i], [ex[d] for d in (20, 21, 22)]).prompt for i in range(10)]
    out = {}
    for name, prompts in (("plain", plain), ("shared", shared)):
        scores = evaluate.score(model, prompts, encoder.label_ids, tok.pad_token_id, tap, batch_size=3)
        out[name] = dict(vars(scores))
    out["generated"] = evaluate.generate_texts(model, tok, plain, replace(task, max_new_tokens=3), batch_size=3)
    teacher = targets.cached_collect(model, tap, tok, shared, {"model": "probe"}, max_new_tokens=2, batch_size=3,
                                     distribution=4, store="shards")
    out["teacher"] = [teacher.tokens] + [[resolve(t) for t in getattr(teacher, name)]
                                         for name in ("acts", "top_ids", "top_logp")]
    model = adapters.fresh(model, adapters.AdapterConfig(), 0)
    items = [Item(p, t, a) for p, t, a in zip(plain, teacher.tokens, teacher.acts)]
    cfg = TrainConfig(batch_size=3, max_epochs=2, eval_every=1, per_layer_norm=True)
    out["log"] = train_stage(model, tap, items[:7], items[7:], Stage("ia2", "icl"), cfg, 0, tok.pad_token_id)
    out["adapter"] = adapter_state(model)
    return out


def primitives() -> dict:
    """What the exchanges return in this process."""
    local = distributed.shard(list(range(5)))
    flag = torch.tensor([distributed.rank() + 1.0, 2.0])
    distributed.all_reduce_sum_([flag])
    distributed.barrier()
    return {"world": distributed.world_size(), "main": distributed.is_main(), "shard": local,
            "gather": distributed.gather([x * x for x in local]), "everyone": distributed.everyone(distributed.rank()),
            "from_main": distributed.from_main(distributed.rank()), "agree": distributed.agree(distributed.rank() == 0),
            "sum": flag.tolist()}


def worker(rank: int, port: int, model: Path, task: Path, root: Path) -> None:
    """One of two processes, set up as torchrun would: exchanges, the probe, then a whole run through the CLI."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), IA2_CACHE=str(root / "cache2"))
    written: list[str] = []
    record = recording(written)
    for module in WRITERS:
        module.atomic_path = record
    result = {"primitives": primitives(), "probe": probe(model, task)}
    result["code"] = cli.main(run_argv(model, task, root / "two"))
    torch.save({**result, "written": written}, root / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dirs) -> dict:
    """The probe and run in one process (here), then in two spawned processes."""
    root = tmp_path_factory.mktemp("dist")
    task, model = write_jsonl(root / "toy.jsonl", toy_rows(40)), model_dirs["llama"]
    written: list[str] = []
    record = recording(written)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IA2_CACHE", str(root / "cache1"))
        for module in WRITERS:
            patch.setattr(module, "atomic_path", record)
        one = {"primitives": primitives(), "probe": probe(model, task), "code": cli.main(run_argv(model, task, root / "one"))}
    spawned, deadline = mp.spawn(worker, args=(free_port(), model, task, root), nprocs=2, join=False), time.monotonic() + 600
    while not spawned.join(timeout=5):
        if time.monotonic() > deadline:
            for process in spawned.processes:
                process.kill()
            pytest.fail("the two processes did not finish within 600 s")
    two = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"root": root, "one": {**one, "written": written}, "two": two}


def relative(written: list[str], root: Path, out: str, cache: str) -> list[str]:
    return [w.replace(str(root / out), "OUT").replace(str(root / cache), "CACHE") for w in written]


def test_exchanges_in_one_process(runs):
    assert runs["one"]["primitives"] == {"world": 1, "main": True, "shard": [0, 1, 2, 3, 4], "gather": [0, 1, 4, 9, 16],
                                         "everyone": [0], "from_main": 0, "agree": True, "sum": [1.0, 2.0]}
    assert distributed.device("auto") == models.device("auto")


def test_exchanges_across_two_processes(runs):
    first, second = (r["primitives"] for r in runs["two"])
    assert first["shard"] == [0, 2, 4] and second["shard"] == [1, 3]
    for rank, got in enumerate((first, second)):
        assert got["world"] == 2 and got["main"] == (rank == 0)
        assert got["gather"] == [0, 1, 4, 9, 16], "results of a strided shard come back in the items' order"
        assert got["everyone"] == [0, 1] and got["from_main"] == 0 and got["agree"] is False
        assert got["sum"] == [3.0, 4.0]


def same(a, b) -> bool:
    """Exact equality of nested results (tensors, arrays, lists, dicts)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_collection_scoring_and_generation_are_identical(runs):
    """Each batch is computed whole by one process, so every process returns exactly what one process computes."""
    one = runs["one"]["probe"]
    for two in runs["two"]:
        for name in ("plain", "shared", "generated", "teacher"):
            assert same(one[name], two["probe"][name]), name


def test_training_matches_one_process(runs):
    """A --per-layer-norm IA2 stage whose batches (3, 3, 1) split across two processes, the last leaving one idle."""
    one = runs["one"]["probe"]
    first, second = (r["probe"] for r in runs["two"])
    assert same(first["adapter"], second["adapter"]), "every process holds the same adapter"
    for name, weight in one["adapter"].items():
        torch.testing.assert_close(first["adapter"][name], weight, atol=WEIGHTS_ATOL, rtol=0)
    assert [h["step"] for h in first["log"]["history"]] == [h["step"] for h in one["log"]["history"]]
    assert first["log"]["best_step"] == one["log"]["best_step"]
    for got, want in zip(first["log"]["history"], one["log"]["history"]):
        assert got["dev_loss"] == pytest.approx(want["dev_loss"], abs=METRICS_ATOL)


def test_run_matches_one_process(runs):
    root = runs["root"]
    assert runs["one"]["code"] == 0 and [r["code"] for r in runs["two"]] == [0, 0]
    one, two = (json.loads((root / out / "results.json").read_text())["rows"] for out in ("one", "two"))
    assert [(r["seed"], r["method"]) for r in one] == [(r["seed"], r["method"]) for r in two]
    for a, b in zip(one, two):
        assert a["accuracy"] == b["accuracy"] and a.get("dev_accuracy") == b.get("dev_accuracy"), a["method"]
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=METRICS_ATOL), (a["method"], key)
    for method in ("sft", "ia2", "ia2-sft"):
        folder = Path("adapters") / "seed0" / method / "adapter_model.safetensors"
        a, b = load_file(str(root / "one" / folder)), load_file(str(root / "two" / folder))
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=WEIGHTS_ATOL, rtol=0)
    logs = [json.loads((root / out / "train_logs.json").read_text()) for out in ("one", "two")]
    assert [[(s["steps"], s["best_step"]) for s in e["stages"]] for e in logs[0]] == \
        [[(s["steps"], s["best_step"]) for s in e["stages"]] for e in logs[1]]
    (file_one,), (file_two,) = ((root / cache / "targets").glob("*.safetensors") for cache in ("cache1", "cache2"))
    assert same(load_file(str(file_one)), load_file(str(file_two))), "teacher targets are identical"


def test_only_the_main_process_writes_each_file_once(runs):
    root = runs["root"]
    main, other = (r["written"] for r in runs["two"])
    assert other == []
    assert len(set(main)) == len(main)
    assert relative(main, root, "two", "cache2") == relative(runs["one"]["written"], root, "one", "cache1")
