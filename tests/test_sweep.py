"""Sweeps on a tiny model: grid expansion, shared teacher targets, resuming, dev-only selection, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import toy_rows, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.config import adapter_kinds
from ia2.errors import IA2Error
from ia2.reporting import aggregate, report
from ia2.run import experiment, manifest, sweep
from ia2.training import loop, stages


def write_yaml(path: Path, model: Path, task: Path, **extra: str) -> Path:
    text = f"""
methods: [zero-shot, icl, sft, ia2, ia2-sft]
seeds: [0, 1]
grid:
  model: ["{model}"]
  task: ["jsonl:{task}"]
  n_train: [4, 6]
tune:
  lr: [0.0001, 0.01]
fixed:
  n_test: 10
  train: {{max_steps: 4, on_divergence: record}}
select: {extra.get("select", "dev_loss")}
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory, model_dirs):
    root = tmp_path_factory.mktemp("sweep")
    task = write_jsonl(root / "toy.jsonl", toy_rows(40))
    config = write_yaml(root / "sweep.yaml", model_dirs["llama"], task)
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_CACHE", str(cache))
        assert cli.main(["sweep", str(config), "--out", str(root / "out")]) == 0
    return {"root": root, "config": config, "out": root / "out", "cache": cache}


def test_grid_expands_conditions_times_tuned_values(swept):
    plan = sweep.load(swept["config"], swept["out"])
    configs = plan.configs()
    assert len(configs) == 4
    assert sorted((c.data.n_train, c.train.lr) for c in configs) == [(4, 0.0001), (4, 0.01), (6, 0.0001), (6, 0.01)]
    assert all(c.train.max_steps == 4 and c.data.n_test == 10 and c.seeds == (0, 1) for c in configs)
    assert len({sweep.run_dir(plan.out, c) for c in configs}) == 4


def test_teacher_targets_are_shared_across_learning_rates(swept):
    """Targets depend on (N, seed), not on the learning rate: 2 N × 2 seeds files for 4 runs × 2 seeds."""
    assert len(list((swept["cache"] / "targets").glob("*.safetensors"))) == 4


def test_finished_sweep_is_skipped_and_a_lost_row_is_recomputed(swept, monkeypatch):
    monkeypatch.setenv("IA2_CACHE", str(swept["cache"]))
    plan = sweep.load(swept["config"], swept["out"])

    def no_run(*args, **kwargs):
        raise AssertionError("a finished run must not be rerun")

    monkeypatch.setattr(experiment, "run_cell", no_run)
    specs = sorted(swept["out"].rglob("spec.json"))
    recorded = [json.loads(p.read_text()) for p in specs]
    for path in specs:
        path.write_text(json.dumps({"recorded": "by an earlier version"}))
    sweep.execute(plan)
    assert all(json.loads(p.read_text()) == {"recorded": "by an earlier version"} for p in specs), (
        "a finished run keeps the spec it ran under"
    )
    for path, data in zip(specs, recorded):
        path.write_text(json.dumps(data))
    monkeypatch.undo()
    monkeypatch.setenv("IA2_CACHE", str(swept["cache"]))
    lost = next(swept["out"].rglob("rows/*/seed1/sft.json"))
    lost.unlink()
    calls = []
    real = loop.train_lanes
    monkeypatch.setattr(stages, "train_lanes", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    sweep.execute(plan)
    assert lost.exists()
    assert [f"{s.loss}:{s.labels}" for s in calls] == ["ce:gold"], "only the lost (seed, method) is retrained"


def test_a_packed_cell_gives_the_rows_of_runs_trained_one_at_a_time(swept, tmp_path, monkeypatch):
    """With pack 4, each N's cell (2 learning rates × 2 seeds) trains its 4 adapters in one pass per stage; rows and
    training logs match the unpacked sweep's (same steps and early stops; metrics to 1e-5, the tolerance of
    tests/test_packing.py's weights)."""
    monkeypatch.setenv("IA2_CACHE", str(swept["cache"]))
    text = swept["config"].read_text().replace("train: {", "runtime: {pack: 4}\n  train: {")
    packed_yaml = tmp_path / "packed.yaml"
    packed_yaml.write_text(text)
    sizes, real = [], loop.train_lanes
    monkeypatch.setattr(
        stages, "train_lanes", lambda model, tap, lanes, *a: sizes.append(len(lanes)) or real(model, tap, lanes, *a)
    )
    plan = sweep.load(packed_yaml, tmp_path / "out")
    assert [len(cell) for cell in sweep.cells(plan.configs())] == [2, 2]
    sweep.execute(plan)
    assert sizes == [4] * 6, "per cell: SFT, IA2, and IA2 → SFT's SFT stage (its IA2 stage reused), 4 adapters each"
    for one, packed in zip(
        sorted(swept["out"].rglob("rows/*/seed*/*.json")), sorted((tmp_path / "out").rglob("rows/*/seed*/*.json"))
    ):
        a, b = json.loads(one.read_text()), json.loads(packed.read_text())
        assert one.relative_to(swept["out"]) == packed.relative_to(tmp_path / "out")
        assert a["accuracy"] == b["accuracy"], one
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), (one, key)
        steps = lambda row: [(s["steps"], s["best_step"]) for s in row.get("train", [])]  # noqa: E731
        assert steps(a) == steps(b)


def test_selection_uses_dev_loss_only(swept):
    rows = aggregate.load_rows(swept["out"])
    kept, choices = aggregate.select(rows, "dev_loss")
    assert {c["method"] for c in choices} == {"sft", "ia2", "ia2-sft"}
    for choice in choices:
        mine = [r for r in rows if r["condition"] == choice["condition"] and r["method"] == choice["method"]]
        by_lr = {}
        for r in mine:
            by_lr.setdefault(r["tuned"]["train.lr"], []).append(r["train"][-1]["best_dev_loss"])
        best = min(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
        assert choice["tuned"] == {"train.lr": best}
    assert len(kept) == 2 * 2 * 5, "2 N × 2 seeds × 5 methods after selection"


def test_report_files_and_cells(swept):
    out = swept["out"]
    for name in ("report.md", "tables.tex", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "summary.json").read_text())
    cells = data["cells"]
    assert sorted({(c["n_train"], c["method"]) for c in cells}) == sorted(
        (n, m) for n in (4, 6) for m in ("zero-shot", "icl", "sft", "ia2", "ia2-sft")
    )
    assert all(c["n_seeds"] == 2 for c in cells)
    assert {t["n_train"] for t in data["tests"]} == {4, 6} and all(t["pairs"] == 2 for t in data["tests"])
    pooled = [(t["metric"], t["n_train"], t["pairs"]) for t in data["pooled_tests"]]
    assert pooled == [(m, n, pairs) for m in ("accuracy", "ece") for n, pairs in ((4, 2), (6, 2), ("all", 4))]
    assert list(out.glob("figures/accuracy_vs_n__*.png")) and list(out.glob("figures/reliability__*.png"))
    assert list(out.glob("figures/subspace_overlap__*.png"))
    md = (out / "report.md").read_text()
    assert (
        "N = 4" in md and "N = 6" in md and "IA2 → SFT" in md and "subspace overlap" in md and "Means over tasks" in md
    )
    assert md.count("| p (one-sided, IA2→SFT better) | p (two-sided) |") == 2, "per setting and pooled, both labelled"
    protocol = md.split("## Protocol\n\n")[1].split("\n\n")[0]
    assert "- Seeds: 0, 1; N: 4, 6" in protocol and "`train.lr` ∈ {0.0001, 0.01}" in protocol
    assert (
        "`data.n_test` = 10" in protocol and "`train.max_steps` = 4" in protocol and "`train.patience` = 5" in protocol
    )
    commit = (manifest.git_commit() or "")[:7] or "no commit recorded"
    code = f"ia2 {manifest.versions()['ia2']}, {commit} (4 runs)"
    assert f"- Code (the commit that finished each run, from its manifest): {code}" in protocol
    assert "\\begin{table*}" in (out / "tables.tex").read_text()
    assert report.write(out) == md, "the report is a pure function of the rows"


def test_overlaps_stay_reported_after_the_adapters_are_deleted(swept, tmp_path):
    """A sweep's committed runs keep rows, not adapters: the overlaps measured while they existed (every tuned
    combination, so a later selection finds its pair) are read back from overlaps.json."""
    copy = tmp_path / "out"
    shutil.copytree(swept["out"], copy)
    before = report.write(copy)
    records = json.loads((copy / "overlaps.json").read_text())
    same_seed = 2 * 2 * 3 * 2 * 2  # 2 N × 2 seeds × 3 pairs × 2 × 2 learning-rate combinations
    next_seed = 2 * 3 * 2  # 2 N × 3 methods × 2 learning rates, seed 0 against seed 1 of the same run
    assert len(records) == same_seed + next_seed
    for saved in copy.glob("runs/**/adapters"):
        shutil.rmtree(saved)
    assert report.write(copy) == before and "| ia2 vs ia2-sft |" in before
    assert "| sft vs sft, next seed |" in before and "| ia2-sft vs ia2-sft, next seed |" in before


def test_a_sweep_report_says_how_its_stages_ended_and_tests_every_declared_pair(swept):
    """The real sweep (max_steps 4): every stage of every seed is counted, none ran past the step cap, every pair the
    methods declare besides the headline is tested, and the report's tables and summary.json agree."""
    md = report.write(swept["out"])
    stages = json.loads((swept["out"] / "summary.json").read_text())["stages"]
    assert {(s["method"], s["position"]) for s in stages} == {("sft", 1), ("ia2", 1), ("ia2-sft", 1), ("ia2-sft", 2)}
    assert all(s["seeds"] == 2 and s["steps_max"] <= 4 for s in stages)
    assert "## How the trained stages ended" in md and md.count("| IA2 → SFT | 2. ce:gold |") == 2, "one per N"
    declared = json.loads((swept["out"] / "summary.json").read_text())["method_pair_tests"]
    assert sorted({(t["a"], t["b"], t["metric"], t["n_train"]) for t in declared}) == sorted(
        (a, b, metric, n)
        for a, b in (("ia2", "sft"), ("ia2-sft", "ia2"))
        for metric in ("accuracy", "ece")
        for n in (4, 6)
    ), "every declared pair but the headline, both metrics, each N"
    assert md.count("| IA2 only − SFT only | ") == 2 and md.count("| IA2 → SFT − IA2 only | ") == 2


def test_a_report_keeps_variants_apart(model_dirs, tmp_path):
    """Two conditions that differ in a training setting: their means, paired tests, figures and overlaps are
    reported apart, each named by the setting that separates them."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(30))
    model = model_dirs["llama"]
    path = tmp_path / "variants.yaml"
    path.write_text(
        "methods: [sft, ia2, ia2-sft]\nseeds: [0, 1]\nfixed: {n_test: 6, max_steps: 2, on_divergence: record}\n"
        "grid:\n"
        f'  - {{model: ["{model}"], task: ["jsonl:{task}"], n_train: [4, 6], patience: [5]}}\n'
        f'  - {{model: ["{model}"], task: ["jsonl:{task}"], n_train: [4, 6], patience: [1]}}\n'
    )
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for patience in (1, 5):
        assert f"## Means over tasks, train.patience={patience}" in md
        assert f"## IA2 → SFT against SFT only, paired over seeds, train.patience={patience}" in md
        assert f"## LoRA subspace overlap, {model.name}, train.patience={patience}" in md
    assert len(list(out.glob("figures/accuracy_vs_n__*__v[01].png"))) == 2


@pytest.mark.parametrize(
    "text, needle",
    [
        ("methods: [sft]\nseeds: [0]\ngrid: {model: [m], task: [t]}\nbogus: 1\n", "unknown key 'bogus'"),
        ("methods: []\nseeds: [0]\n", "field 'methods' must be a non-empty list"),
        ("methods: [sft]\nseeds: [0]\ngrid: {n_train: 4}\n", "grid.n_train must be a non-empty list"),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, train: {lrr: 1}}\n",
            "bad.yaml: fixed.train.lrr: unknown setting 'lrr'",
        ),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, train: {lr: -1}}\n",
            "bad.yaml: fixed.train.lr must be positive",
        ),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t}\ngrid: {n: [4]}\n",
            "bad.yaml: grid.n: setting 'n' is now called 'n_train'",
        ),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, epochs: 3}\n",
            "setting 'epochs' is now called 'max_epochs'",
        ),
        ("methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, adapter: {kind: ia3}}\n", "adapter: .*peft_type"),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, train: {k_max: 3}}\n",
            "'k_max' is a setting of prompt, not train",
        ),
        ("methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t}\nselect: test\n", "field 'select' must be one of"),
        ("methods: [sft\n", "malformed YAML"),
        ("methods: [sft]\nseeds: [0]\ngrid: [a, b]\n", "grid must be a mapping of settings or a list of them"),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, methods: [icl]}\n",
            "fixed: seeds are given at the top of a sweep file, and methods there or as a grid axis",
        ),
        (
            "methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t}\ntune: {lr: [{lr: 0.1, patience: 2}]}\n",
            "tune.lr: a tuned axis takes values",
        ),
        (
            "methods: [ia2+sft]\nseeds: [0]\nfixed: {model: m, task: t}\ntune: {w: [0.1, 0.9]}\n",
            "tuning w rescales the training loss",
        ),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(IA2Error, match=needle.replace("[", r"\[").replace("(", r"\(")):
        sweep.load(path)


def test_a_grid_value_can_set_several_fields(tmp_path):
    """A task with its own out-of-distribution sets, as the paper pairs them."""
    path = tmp_path / "ood.yaml"
    path.write_text(
        "methods: [sft]\nseeds: [0]\nfixed: {model: m}\ngrid:\n  task:\n"
        "    - {task: sst2, eval_tasks: [finsen, poems]}\n    - {task: agnews, eval_tasks: [bbcnews]}\n"
        "  n_train: [2, 4]\n"
    )
    configs = sweep.load(path).configs()
    assert sorted((c.data.task, c.data.eval_tasks, c.data.n_train) for c in configs) == [
        ("agnews", ("bbcnews",), 2),
        ("agnews", ("bbcnews",), 4),
        ("sst2", ("finsen", "poems"), 2),
        ("sst2", ("finsen", "poems"), 4),
    ]


def test_a_grid_can_run_its_own_methods(tmp_path):
    """A grid's methods axis (each value a list) overrides the file's methods for its runs; one configuration listed
    with two method lists is refused, as one of them would be dropped."""
    path = tmp_path / "s.yaml"
    head = "methods: [zero-shot, sft]\nseeds: [0]\nfixed: {model: m}\ngrid:\n"
    path.write_text(
        head + "  - {task: [a], n_train: [4]}\n  - {task: [a], n_train: [8], methods: [[sft, sft-steps]]}\n"
    )
    assert [(c.data.n_train, c.methods) for c in sweep.load(path).configs()] == [
        (4, ("zero-shot", "sft")),
        (8, ("sft", "sft-steps")),
    ]
    path.write_text(head + "  - {task: [a], n_train: [4]}\n  - {task: [a], n_train: [4], methods: [[sft]]}\n")
    with pytest.raises(IA2Error, match="one configuration is listed twice with different methods"):
        sweep.load(path)


def test_a_list_of_grids_is_their_union(tmp_path):
    """One model at more N than another, tasks shared through a YAML anchor; an error names the grid it is in."""
    path = tmp_path / "two.yaml"
    path.write_text(
        "methods: [sft]\nseeds: [0]\ntune: {lr: [0.001, 0.01]}\ngrid:\n"
        "  - {model: [big], task: &tasks [t1, t2], n_train: [4, 8]}\n"
        "  - {model: [small], task: *tasks, n_train: [4]}\n"
    )
    configs = sweep.load(path).configs()
    assert len(configs) == 12
    assert {(c.model, c.data.task, c.data.n_train) for c in configs} == {
        (m, t, n) for m, ns in (("big", (4, 8)), ("small", (4,))) for t in ("t1", "t2") for n in ns
    }
    assert [c.data.n_train for c in configs] == sorted(c.data.n_train for c in configs)
    path.write_text(
        "methods: [sft]\nseeds: [0]\ngrid:\n  - {model: [m], task: [t], n_train: [4, 8]}\n"
        "  - {model: [m], task: [t], n_train: [4]}\n"
    )
    assert [c.data.n_train for c in sweep.load(path).configs()] == [4, 8], "a point listed twice is one run"
    path.write_text("methods: [sft]\nseeds: [0]\ngrid:\n  - {model: [m], task: [t]}\n  - {model: [m], lr: [x]}\n")
    with pytest.raises(IA2Error, match=r"grid\[1\]"):
        sweep.load(path)


def test_runs_recorded_before_an_option_existed_group_with_later_ones():
    old = {"model": "m", "task": "t", "n": 4, "train": {"lr": 0.001}, "adapter": {"r": 8}}
    new = config.with_defaults({**old, "teacher": "cached", "train": {"lr": 0.001, "max_steps": None}})
    assert config.with_defaults(old) == new


def test_configs_of_the_earlier_flat_layout_upgrade_to_todays():
    """spec.json and results.json of ia2 0.1 (flat fields, train.batch_size, adapter kind/r/targets) read as
    today's nested config, so earlier sweeps report and group with new ones."""
    old = {
        "model": "m",
        "task": "t",
        "n": 4,
        "k_max": 16,
        "teacher": "online",
        "batch_size": 32,
        "train": {"lr": 0.001, "batch_size": 2},
        "adapter": {"kind": "lora", "r": 16, "targets": ["q_proj"]},
    }
    got = config.from_dict(old)
    assert (got.data.task, got.data.n_train, got.prompt.k_max, got.teacher.teacher_mode) == ("t", 4, 16, "online")
    assert (got.runtime.batch_size, got.train.train_batch_size, got.train.lr) == (32, 2, 0.001)
    assert got.adapter == {**adapter_kinds.PRESETS["lora"], "r": 16, "target_modules": ["q_proj"]}
    assert config.from_dict(config.to_dict(got)) == got


def test_a_setting_given_with_one_task_describes_the_task_not_a_variant():
    """StrategyQA with its own answer prefix pools with the other tasks; a varied adapter still separates."""

    def condition(task: str, prefix: str | None, kind: str = "LORA") -> str:
        return json.dumps(
            {
                "model": "m",
                "data": {"task": task, "n_train": 4, "eval_tasks": [], "answer_prefix": prefix},
                "adapter": {"peft_type": kind},
                "train": {},
            },
            sort_keys=True,
        )

    same = [condition("a", None), condition("b", None), condition("strategyqa", "")]
    assert len(set(report.variant_keys(same).values())) == 1
    assert set(report.variants(same).values()) == {""}
    varied = same + [condition("a", None, "IA3"), condition("b", None, "IA3"), condition("strategyqa", "", "IA3")]
    assert len(set(report.variant_keys(varied).values())) == 2
    assert report.variants(varied)[condition("a", None, "IA3")] == "adapter.peft_type=IA3"


def test_cells_and_tests_order_n_as_a_number():
    """Run folders sort n16 before n4; tables must not: N=4, then 8, then 16."""
    rows = [
        {
            "model": "m",
            "task": "t",
            "eval_task": "t",
            "n_train": n,
            "method": method,
            "condition": f"c{n}",
            "seed": seed,
            "accuracy": 0.5 + 0.01 * seed + (method == "ia2-sft") * 0.02 * (seed + 1),
            "ece": 0.1,
        }
        for n in (16, 4, 8)
        for method in ("sft", "ia2-sft")
        for seed in (0, 1)
    ]
    assert [c["n_train"] for c in aggregate.cells(rows)][::2] == [4, 8, 16]
    assert [t["n_train"] for t in aggregate.paired_test(rows, by=("model", "n_train"))] == [4, 8, 16]


def test_the_report_reads_the_runs_the_sweep_names_not_stale_folders(swept, tmp_path):
    """A run folder left beside a sweep's own (another plan's, or an earlier version's with other keys) is not
    pooled with them: the report reads the runs sweep.json names."""
    copy = tmp_path / "out"
    shutil.copytree(swept["out"], copy)
    own = len(aggregate.load_rows(copy))
    first = next((copy / "runs").rglob("spec.json")).parent
    shutil.copytree(first, copy / "runs" / "stale" / first.name)
    assert len(aggregate.load_rows(copy)) == own
    (copy / "sweep.json").unlink()
    assert len(aggregate.load_rows(copy)) > own, "without sweep.json every run below the folder is read"


def test_an_unfinished_run_folder_is_reported_from_its_run_json(swept, tmp_path):
    """An interrupted `ia2 run` has rows and run.json but no results.json yet: its rows can be reported."""
    run = next((swept["out"] / "runs").rglob("spec.json")).parent
    folder = tmp_path / "run"
    shutil.copytree(run / "rows", folder / "rows")
    shutil.copy(run / "run.json", folder / "run.json")
    rows = aggregate.load_rows(folder)
    assert rows and {r["method"] for r in rows} == {"zero-shot", "icl", "sft", "ia2", "ia2-sft"}


def test_a_sweep_with_declared_tests_reports_them(swept, tmp_path):
    """The swept sweep's rows, with a `tests` block in its sweep.json: the report has the section and summary.json
    the measured family, the secondary tests Holm-adjusted."""
    out = tmp_path / "out"
    shutil.copytree(swept["out"], out)
    plan = json.loads((out / "sweep.json").read_text())
    tests = {
        "primary": {"name": "n6", "a": "ia2-sft", "b": "sft", "n_train": 6},
        "secondary": [
            {"name": "n4", "a": "ia2-sft", "b": "sft", "n_train": 4},
            {"name": "ia2", "a": "ia2", "b": "sft"},
        ],
    }
    (out / "sweep.json").write_text(json.dumps(plan | {"tests": tests}))
    md = report.write(out)
    measured = json.loads((out / "summary.json").read_text())["preregistered"]
    assert [(t["role"], t["name"], t["pairs"]) for t in measured] == [
        ("primary", "n6", 2),
        ("secondary", "n4", 2),
        ("secondary", "ia2", 4),
    ]
    assert "## Pre-registered tests" in md and "| primary | n6 | IA2 → SFT − SFT only | n_train=6 |" in md
    assert sweep.load(swept["config"]).tests == {}, "a file without tests declares none"
