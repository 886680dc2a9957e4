"""End to end through the CLI on a tiny model: the results contract, reports, manifest, resuming, determinism."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from peft import PeftModel

from conftest import small_run, toy_rows, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.data import prompts, splits
from ia2.data.prompts import Encoder, teacher_prompts, teacher_queries
from ia2.data.tasks import load_task
from ia2.errors import IA2Error
from ia2.evaluation import scoring
from ia2.model import loading
from ia2.run import measure
from ia2.run.context import declared, set_up
from ia2.teacher import targets
from ia2.training import stages

CONTRACT = {"task", "model", "method", "n_train", "seed", "accuracy", "ece", "ece_equal_mass", "brier", "nll", "asim"}
METHODS = ["zero-shot", "icl", "sft", "ia2", "ia2-sft"]
NUMBERS = ["accuracy", "ece", "ece_equal_mass", "brier", "nll", "asim"]


def argv(model: Path, task: Path, out: Path, seeds: str = "0,1", methods: list[str] = METHODS) -> list[str]:
    return small_run(model, f"jsonl:{task}", out, seeds=seeds, methods=",".join(methods), max_epochs=2)


def run_with_cache(args: list[str], cache: Path) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_CACHE", str(cache))
        return cli.main(args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dirs):
    """Run A (seeds 0,1) and run B (seeds 1,0) into different folders with different caches."""
    root = tmp_path_factory.mktemp("e2e")
    task = write_jsonl(root / "toy.jsonl", toy_rows(40))
    model = model_dirs["llama"]
    a, b = root / "a", root / "b"
    assert run_with_cache(argv(model, task, a), root / "cache_a") == 0
    assert run_with_cache(argv(model, task, b, seeds="1,0"), root / "cache_b") == 0
    return {"root": root, "task": task, "model": model, "a": a, "b": b}


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_results_contract(runs):
    res = results(runs["a"])
    rows = res["rows"]
    assert sorted((r["seed"], r["method"]) for r in rows) == sorted((s, m) for s in (0, 1) for m in METHODS)
    for row in rows:
        assert CONTRACT <= set(row), CONTRACT - set(row)
        assert row["task"] == f"jsonl:{runs['task']}"
        assert row["model"] == str(runs["model"])
        assert row["n_train"] == 4
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["accuracy"] * 10 == pytest.approx(round(row["accuracy"] * 10)), "accuracy over all 10 test examples"
        assert 0.0 <= row["ece"] <= 1.0 and 0.0 <= row["ece_equal_mass"] <= 1.0
        assert 0.0 <= row["brier"] <= 2.0 and row["nll"] >= 0.0
        if row["method"] == "icl":
            assert row["asim"] is None
        else:
            assert isinstance(row["asim"], float) and -1.0 <= row["asim"] <= 1.0
    assert res["config"]["data"]["n_train"] == 4 and res["config"]["data"]["n_test"] == 10


def test_reports_and_manifest(runs):
    out = runs["a"]
    assert (out / "results.md").read_text().count("\n| ") >= len(METHODS)
    for method in METHODS:
        assert f"| {method} |" in (out / "results.md").read_text()
    png = (out / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    for pkg in ("torch", "transformers", "peft", "numpy"):
        assert manifest["versions"][pkg]
    task = load_task(f"jsonl:{runs['task']}")
    assert manifest["task"]["data_hash"] == task.data_hash()
    assert manifest["seeds"] == [0, 1]
    assert len(manifest["task"]["test_indices"]) == 10
    # adapters for the trained methods, in PEFT format
    for seed in (0, 1):
        for method in ("sft", "ia2", "ia2-sft"):
            assert (out / "adapters" / f"seed{seed}" / method / "adapter_config.json").exists()


def test_ia2_sft_reuses_the_ia2_stage(runs):
    logs = json.loads((runs["a"] / "train_logs.json").read_text())
    by = {(entry["seed"], entry["method"]): entry["stages"] for entry in logs}
    for seed in (0, 1):
        assert [s["stage"] for s in by[(seed, "ia2")]] == ["ia2:icl"]
        assert [s["stage"] for s in by[(seed, "ia2-sft")]] == ["ia2:icl", "ce:gold"]
        assert by[(seed, "ia2-sft")][0] == by[(seed, "ia2")][0]
        assert [s["stage"] for s in by[(seed, "sft")]] == ["ce:gold"]


def test_same_seed_same_numbers_across_runs(runs):
    a = {(r["seed"], r["method"]): r for r in results(runs["a"])["rows"]}
    b = {(r["seed"], r["method"]): r for r in results(runs["b"])["rows"]}
    assert a.keys() == b.keys()
    for key in a:
        for metric in NUMBERS:
            assert a[key][metric] == b[key][metric], (key, metric)
    # the two seeds really differ (different training sets)
    assert any(
        a[(0, m)]["accuracy"] != a[(1, m)]["accuracy"] or a[(0, m)]["nll"] != a[(1, m)]["nll"]
        for m in ("sft", "ia2", "ia2-sft")
    )


def test_saved_adapter_reproduces_its_row(runs):
    """The saved ia2 adapter (the restored best state) scores the test set exactly as the row says."""
    out = runs["a"]
    manifest = json.loads((out / "manifest.json").read_text())
    row = next(r for r in results(out)["rows"] if r["seed"] == 0 and r["method"] == "ia2")
    model, tok = loading.load(str(runs["model"]))
    peft = PeftModel.from_pretrained(model, str(out / "adapters" / "seed0" / "ia2")).eval()
    task = load_task(f"jsonl:{runs['task']}")
    encoder = Encoder(task, tok, 512)
    plain = [encoder.encode(task.examples[i]) for i in manifest["task"]["test_indices"]]
    scores = scoring.score(peft, [p.prompt for p in plain], encoder.label_ids, tok.pad_token_id)
    got = scoring.summarise(scores, np.array([p.label for p in plain]), [ids[0] for ids in encoder.label_ids])
    for metric in ("accuracy", "ece", "brier", "nll"):
        assert got[metric] == pytest.approx(row[metric], abs=1e-6), metric


def test_rerun_reuses_rows(runs, monkeypatch):
    out, root = runs["a"], runs["root"]
    row_files = sorted(out.glob("rows/*/seed*/*.json"))
    methods = ["ia2-sft.json", "ia2.json", "icl.json", "sft.json", "zero-shot.json"]
    assert [f"{p.parent.name}/{p.name}" for p in row_files] == [f"seed{s}/{m}" for s in (0, 1) for m in methods]
    mtimes = [os.stat(p).st_mtime_ns for p in row_files]
    before = results(out)["rows"]

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun with the same arguments must not retrain")

    monkeypatch.setattr(stages, "train_lanes", no_training)
    monkeypatch.setattr(targets, "collect", no_training)
    assert run_with_cache(argv(runs["model"], runs["task"], out), root / "cache_a") == 0
    assert [os.stat(p).st_mtime_ns for p in row_files] == mtimes
    assert results(out)["rows"] == before


def test_an_interrupted_method_keeps_the_adapters_it_finished(runs, tmp_path, monkeypatch):
    """Packs of one adapter (the CPU default): each seed's rows are written as soon as its adapter is trained, so an
    interruption during seed 1's SFT keeps seed 0's, and the resumed run trains seed 1 only, to run A's numbers."""
    out, trained = tmp_path / "out", []
    real = stages.train_lanes

    def interrupted(model, tap, lanes, *args, **kwargs):
        if any(lane.desc.endswith("s1") for lane in lanes):
            raise KeyboardInterrupt
        trained.append([lane.desc for lane in lanes])
        return real(model, tap, lanes, *args, **kwargs)

    monkeypatch.setattr(stages, "train_lanes", interrupted)
    interrupted_run = run_with_cache(argv(runs["model"], runs["task"], out, methods=["sft"]), runs["root"] / "cache_a")
    assert interrupted_run == 130, "an interrupted command exits as Ctrl-C does"
    assert trained == [["ce:gold s0"]]
    assert [p.parent.name for p in out.glob("rows/*/seed*/sft.json")] == ["seed0"]
    monkeypatch.setattr(stages, "train_lanes", real)
    assert run_with_cache(argv(runs["model"], runs["task"], out, methods=["sft"]), runs["root"] / "cache_a") == 0
    sft = {r["seed"]: r for r in results(out)["rows"] if r["method"] == "sft"}
    assert sft == {r["seed"]: r for r in results(runs["a"])["rows"] if r["method"] == "sft"}


def test_packs_of_two_write_their_rows_before_the_next_pack_trains(runs, tmp_path, monkeypatch):
    """--pack 2 over three seeds: seeds 0 and 1 train together and their rows are written before seed 2's pack."""
    out, packs = tmp_path / "out", []
    real = stages.train_lanes

    def recorded(model, tap, lanes, *args, **kwargs):
        packs.append(([lane.desc for lane in lanes], sorted(p.parent.name for p in out.glob("rows/*/seed*/sft.json"))))
        return real(model, tap, lanes, *args, **kwargs)

    monkeypatch.setattr(stages, "train_lanes", recorded)
    args = [*argv(runs["model"], runs["task"], out, seeds="0,1,2", methods=["sft"]), "--pack", "2"]
    assert run_with_cache(args, tmp_path / "cache") == 0
    assert packs == [(["ce:gold s0", "ce:gold s1"], []), (["ce:gold s2"], ["seed0", "seed1"])]


def test_a_run_reads_its_baselines_scores_back_from_the_cache(runs, tmp_path, monkeypatch):
    """The base model's scores (ICL, zero-shot) are cached by what fixes them: a run into a new folder with the same
    cache scores nothing and writes the same baseline rows; an entry that no longer reads is scored again."""
    cache = runs["root"] / "cache_a"
    entries = sorted((cache / "scores").glob("*.safetensors"))
    assert len(entries) == 2 + 1, "ICL of seeds 0 and 1, zero-shot once"
    rows_a = {(r["seed"], r["method"]): r for r in results(runs["a"])["rows"] if r["method"] in ("icl", "zero-shot")}

    def no_scoring(*args, **kwargs):
        raise AssertionError("cached baselines must not be scored again")

    with monkeypatch.context() as mp:
        mp.setattr(measure, "scores", no_scoring)
        args = argv(runs["model"], runs["task"], tmp_path / "again", methods=["zero-shot", "icl"])
        assert run_with_cache(args, cache) == 0
    rows = {(r["seed"], r["method"]): r for r in results(tmp_path / "again")["rows"]}
    assert rows == rows_a
    entries[0].write_bytes(b"not a safetensors file")
    assert (
        run_with_cache(argv(runs["model"], runs["task"], tmp_path / "rescored", methods=["zero-shot", "icl"]), cache)
        == 0
    )
    assert {(r["seed"], r["method"]): r for r in results(tmp_path / "rescored")["rows"]} == rows_a
    assert sorted((cache / "scores").glob("*.safetensors")) == entries and entries[0].stat().st_size > 100


def test_rerun_with_other_methods_gives_exactly_those_methods(runs, tmp_path):
    """Rows are reused per config key, which leaves the method list out: a rerun asking for other methods must
    still report exactly the methods asked for. (Each rerun adds a new seed so the run is never fully resumed.)"""
    out = tmp_path / "methods"
    cache = runs["root"] / "cache_a"
    assert run_with_cache(argv(runs["model"], runs["task"], out, seeds="0", methods=["zero-shot", "icl"]), cache) == 0
    assert (
        run_with_cache(argv(runs["model"], runs["task"], out, seeds="0,1", methods=["zero-shot", "icl", "sft"]), cache)
        == 0
    )
    rows = results(out)["rows"]
    assert sorted((r["seed"], r["method"]) for r in rows) == [
        (s, m) for s in (0, 1) for m in ("icl", "sft", "zero-shot")
    ]
    assert run_with_cache(argv(runs["model"], runs["task"], out, seeds="0,1,2", methods=["icl"]), cache) == 0
    assert sorted((r["seed"], r["method"]) for r in results(out)["rows"]) == [(0, "icl"), (1, "icl"), (2, "icl")]


def test_baselines_only_run(tmp_path, model_dirs):
    """zero-shot and icl need no training and no teacher targets."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    out = tmp_path / "out"
    assert cli.main(argv(model_dirs["qwen3"], task, out, seeds="0", methods=["zero-shot", "icl"])) == 0
    rows = results(out)["rows"]
    assert sorted(r["method"] for r in rows) == ["icl", "zero-shot"]
    assert not (out / "adapters").exists()


def test_low_data_mode_trains_ia2_on_unlabelled_queries(tmp_path, model_dirs, monkeypatch):
    """N labelled examples only as demonstrations; IA2 on M unlabelled queries with K demo orders; SFT on the N;
    soft-label SFT on the same teacher answers with their top-k distributions."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IA2_CACHE", str(cache))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(60))
    out = tmp_path / "out"
    args = argv(model_dirs["llama"], task, out, seeds="0", methods=["ia2", "ia2-sft", "soft"])
    assert cli.main(args + ["--unlabelled", "10", "--permutations", "3", "--soft-top-k", "4"]) == 0
    (target_file,) = (cache / "targets").glob("*.safetensors")
    teacher = targets.load(target_file)
    assert len(teacher.tokens) == 10 + 2, "M unlabelled queries + N/2 dev queries"
    assert all(ids.shape == (1, 4) for ids in teacher.top_ids)
    cfg = config.make(
        str(model_dirs["llama"]), f"jsonl:{task}", methods=["ia2"], n_train=4, n_test=10, unlabelled=10, permutations=3
    )
    ctx, _ = set_up(cfg)
    split = splits.draw_split(ctx.test, ctx.pool, cfg.data, 0)
    assert set(split.unlabelled).isdisjoint(split.train + split.dev + split.test) and len(split.unlabelled) == 10
    assert splits.draw_split(ctx.test, ctx.pool, replace(cfg.data, unlabelled=None), 0).train == split.train
    prompts, policy = teacher_prompts(ctx.encoder, split, cfg.prompt, 4, True, 0)
    assert policy == "low-data k=4 permutations=3"
    plain = [ctx.encoder.encode(ctx.task.examples[i]).prompt for i in teacher_queries(split, True)]
    demo_sets = {tuple(p[: -len(q) + 1]) for p, q in zip(prompts, plain)}
    assert len(demo_sets) == 3, "three demonstration orders of the same four labelled examples"
    logs = {e["method"]: e["stages"] for e in json.loads((out / "train_logs.json").read_text())}
    assert [s["stage"] for s in logs["ia2-sft"]] == ["ia2:icl", "ce:gold"]
    assert [s["stage"] for s in logs["soft"]] == ["soft:icl"]


def test_low_data_mode_takes_its_unlabelled_queries_from_a_file(tmp_path, model_dirs, monkeypatch):
    """--unlabelled FILE: IA2 trains on the file's questions (answers, if any, unused), the labelled draw and the test
    set are those of a run without them; the file's content is part of the teacher targets' key."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IA2_CACHE", str(cache))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"question": r["question"]} for r in toy_rows(7, seed=5)])
    cfg = config.make(
        str(model_dirs["llama"]), f"jsonl:{task}", methods=["ia2"], n_train=4, n_test=10, unlabelled=str(queries)
    )
    assert cfg.data.unlabelled == str(queries) and config.make("m", "t", unlabelled="10").data.unlabelled == 10
    ctx, _ = set_up(cfg)
    plain, _ = set_up(replace(cfg, data=replace(cfg.data, unlabelled=None)))
    split = splits.draw_split(ctx.test, ctx.pool, cfg.data, 0, ctx.unlabelled)
    assert (ctx.test, ctx.pool) == (plain.test, plain.pool)
    assert split.train == splits.draw_split(plain.test, plain.pool, plain.cfg.data, 0).train
    assert [ctx.task.examples[i].question for i in split.unlabelled] == [r["question"] for r in toy_rows(7, seed=5)]
    cli_result = cli.main(
        argv(model_dirs["llama"], task, tmp_path / "out", seeds="0", methods=["ia2"]) + ["--unlabelled", str(queries)]
    )
    assert cli_result == 0
    (target_file,) = (cache / "targets").glob("*.safetensors")
    assert len(targets.load(target_file).tokens) == 7 + 2, "the file's 7 queries + N/2 dev queries"


@pytest.mark.parametrize("policy", ["shared", "per-query", "pool"])
def test_icl_demo_policies(tmp_path, model_dirs, policy, monkeypatch):
    """shared: one draw from the training examples for every query; per-query: a draw per query from them;
    pool (reference parity): a draw per query from the pool outside train and dev."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    cfg = config.make(str(model_dirs["llama"]), f"jsonl:{task}", methods=["icl"], n_train=4, n_test=6, icl_demos=policy)
    ctx, _ = set_up(cfg)
    split = splits.draw_split(ctx.test, ctx.pool, cfg.data, 0)
    drawn = []
    real = prompts.draw_demos
    monkeypatch.setattr(
        prompts,
        "draw_demos",
        lambda pool, k, rng, exclude=None: drawn.append(list(pool)) or real(pool, k, rng, exclude),
    )
    se = measure.seed_eval(ctx, ctx.evals[0], split, 0)
    prefixes = {tuple(p.prompt[: -len(q.prompt) + 1]) for p, q in zip(se.icl_prompts, se.plain)}
    assert len(drawn) == 1 + (0 if policy == "shared" else len(ctx.test))
    if policy == "pool":
        assert all(
            set(pool).isdisjoint(split.train + split.dev) and len(pool) == len(ctx.pool) - 6 for pool in drawn[1:]
        )
    else:
        assert all(sorted(pool) == sorted(split.train) for pool in drawn)
    assert (len(prefixes) == 1) == (policy == "shared")


def test_parity_overrides_are_validated_and_applied(toy_jsonl):
    cfg = config.make("m", f"jsonl:{toy_jsonl}", methods=["sft"], answer_prefix="")
    assert declared(cfg.data.task, cfg).answer_prefix == ""
    with pytest.raises(IA2Error, match="^teacher_stop must be one of task, eos, got 'never'"):
        config.make("m", "t", teacher_stop="never")
    with pytest.raises(IA2Error, match="^icl_demos must be one of"):
        config.make("m", "t", icl_demos="random")


def test_bfloat16_base_with_fp32_adapter(tmp_path, model_dirs):
    """--dtype bfloat16 (the paper's GPU setting): the frozen base is bf16, the trained adapter stays fp32."""
    from safetensors.torch import load_file

    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    out = tmp_path / "out"
    assert (
        cli.main(argv(model_dirs["llama"], task, out, seeds="0", methods=["icl", "ia2"]) + ["--dtype", "bfloat16"]) == 0
    )
    weights = load_file(str(out / "adapters" / "seed0" / "ia2" / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    assert results(out)["config"]["runtime"]["dtype"] == "bfloat16"
    with pytest.raises(IA2Error, match="^dtype must be one of"):
        config.make("m", "t", dtype="int8")


def test_the_placebo_teacher_sees_the_same_demonstrations_with_shuffled_labels(tmp_path, model_dirs):
    """The placebo teacher's prompts show the same demonstration questions in the same order as the ICL teacher's,
    with the same answers permuted; some prompts differ from the gold ones, the draw is fixed by the seed, and the
    policy name (part of the targets' key) says so."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    cfg = config.make(str(model_dirs["llama"]), f"jsonl:{task}", methods=["ia2"], n_train=8, n_test=10)
    ctx, _ = set_up(cfg)
    split = splits.draw_split(ctx.test, ctx.pool, cfg.data, 0)
    gold, policy = teacher_prompts(ctx.encoder, split, cfg.prompt, 8, False, 0)
    shuffled, placebo = teacher_prompts(ctx.encoder, split, cfg.prompt, 8, False, 0, "shuffled")
    assert (policy, placebo) == ("leave-one-out k=7", "leave-one-out k=7, labels shuffled")
    assert shuffled == teacher_prompts(ctx.encoder, split, cfg.prompt, 8, False, 0, "shuffled")[0]
    assert len(shuffled) == len(gold) and shuffled != gold
    labels = {ctx.encoder.tokenizer.decode(ids).strip() for ids in ctx.encoder.label_ids}
    for real, fake in zip(gold, shuffled, strict=True):
        real_words, fake_words = ctx.encoder.tokenizer.decode(real).split(), ctx.encoder.tokenizer.decode(fake).split()
        assert [w for w in real_words if w not in labels] == [w for w in fake_words if w not in labels]
        assert sorted(w for w in real_words if w in labels) == sorted(w for w in fake_words if w in labels)


def test_the_icl_baseline_averages_its_metrics_over_several_draws(tmp_path, model_dirs, monkeypatch):
    """--icl-draws 3: the ICL row's metrics are the means over three demonstration draws, the first of which is the
    one a run with one draw makes (so rows of earlier runs stay valid), and the draws differ."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    cache = tmp_path / "cache"
    monkeypatch.setenv("IA2_CACHE", str(cache))
    rows = {}
    for draws in (1, 3):
        out = tmp_path / f"draws{draws}"
        argv = small_run(model_dirs["llama"], f"jsonl:{task}", out, methods="zero-shot,icl", icl_demos="per-query")
        assert cli.main([*argv, "--icl-draws", str(draws), "--n-test", "30"]) == 0
        rows[draws] = next(r for r in json.loads((out / "results.json").read_text())["rows"] if r["method"] == "icl")
    one, three = rows[1], rows[3]
    assert "icl_draws" not in one and three["icl_draws"] == 3 and len(three["accuracy_by_draw"]) == 3
    assert three["accuracy_by_draw"][0] == one["accuracy"]
    assert three["accuracy"] == pytest.approx(np.mean(three["accuracy_by_draw"]))
    stored = [safetensors.safe_open(p, "pt").keys() for p in (cache / "scores").glob("*.safetensors")]
    assert sorted("acts" in keys for keys in stored) == [False, False, True, True], (
        "draws 2 and 3 keep no activations (nothing compares with them); draw 1 and zero-shot do"
    )
    cfg = config.make("m", f"jsonl:{task}", n_train=4)
    split = splits.Split(train=list(range(4)), dev=[4, 5], test=list(range(10, 40)))
    first, second = (prompts.icl_demos(split, range(40), "per-query", 4, 30, 0, draw) for draw in (0, 1))
    assert first == prompts.icl_demos(split, range(40), "per-query", 4, 30, 0) and first != second
    assert cfg.prompt.icl_draws == 1


def test_step_matched_sft_takes_exactly_the_steps_of_ia2_then_sft(tmp_path, model_dirs):
    """sft-steps trains SFT for the optimizer steps IA2 → SFT took on the same seed, without early stopping, and
    keeps its best dev state; run alone it trains IA2 → SFT only to count them."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    logs = {}
    for methods in ("ia2-sft,sft-steps", "sft-steps"):
        out = tmp_path / methods.replace(",", "+")
        argv = small_run(model_dirs["llama"], f"jsonl:{task}", out, methods=methods, max_epochs=3, patience=1)
        assert cli.main(argv) == 0
        logs[methods] = {e["method"]: e["stages"] for e in json.loads((out / "train_logs.json").read_text())}
    together = logs["ia2-sft,sft-steps"]
    budget = sum(stage["steps"] for stage in together["ia2-sft"])
    (matched,) = together["sft-steps"]
    assert matched["stage"] == "ce:gold" and matched["steps"] == budget
    assert matched["history"][-1]["step"] == budget, "no early stop before the budget"
    assert matched["best_dev_loss"] == min(h["dev_loss"] for h in matched["history"])
    assert logs["sft-steps"]["sft-steps"] == [matched], "the same adapter whether or not IA2 -> SFT is reported"


def test_the_placebo_method_trains_on_its_own_teacher_and_the_long_ia2_on_four_times_the_epochs(
    tmp_path, model_dirs, monkeypatch
):
    """ia2-sft-placebo trains IA2 on the placebo teacher's targets (their own cache key, named in its model card)
    then SFT; ia2-long's IA2 stage may take 4x the run's epoch cap, and ia2-long-sft continues that very adapter."""
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    out = tmp_path / "run"
    methods = "ia2,ia2-sft,ia2-sft-placebo,ia2-long,ia2-long-sft"
    argv = small_run(model_dirs["llama"], f"jsonl:{task}", out, methods=methods, max_epochs=2, patience=100)
    assert cli.main(argv) == 0
    logs = {e["method"]: e["stages"] for e in json.loads((out / "train_logs.json").read_text())}
    placebo, real = logs["ia2-sft-placebo"][0], logs["ia2-sft"][0]
    assert [s["stage"] for s in logs["ia2-sft-placebo"]] == ["ia2:placebo", "ce:gold"] and real["stage"] == "ia2:icl"
    assert placebo["history"] != real["history"], "trained on other targets"
    cards = {m: out / "adapters" / "seed0" / m / "ia2.json" for m in ("ia2", "ia2-sft-placebo")}
    keys = {m: json.loads(card.read_text())["teacher_targets"] for m, card in cards.items()}
    assert keys["ia2"] != keys["ia2-sft-placebo"] and all(
        (tmp_path / "cache" / "targets" / f"{k}.safetensors").is_file() for k in keys.values()
    )
    assert logs["ia2"][0]["steps"] * 4 == logs["ia2-long"][0]["steps"], "no early stop (patience 100): the whole cap"
    assert logs["ia2-long-sft"][0] == logs["ia2-long"][0], "IA2 -> SFT (4x) continues the long IA2 stage"
