"""The test matrix: every method and every adapter kind end to end through `experiment.run` on all three tiny
architectures, and the IA2 → SFT continuation from IA2's restored best state with a fresh optimizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from conftest import ARCHS, every_method_on_every_arch, toy_rows, write_jsonl
from ia2 import config
from ia2.config import adapter_kinds
from ia2.data.prompts import Encoder
from ia2.data.tasks import load_task
from ia2.evaluation.scoring import score, summarise
from ia2.model import adapters, loading
from ia2.run import experiment
from ia2.training import loop, stages
from ia2.training.methods import METHODS

SMALL = dict(n_train=4, n_test=10, seeds=[0], max_epochs=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The toy task and an out-of-distribution set with other questions and the same labels."""
    root = tmp_path_factory.mktemp("matrix")
    return {
        "task": write_jsonl(root / "toy.jsonl", toy_rows(40)),
        "ood": write_jsonl(root / "ood.jsonl", toy_rows(12, 7)),
    }


@pytest.fixture(scope="module")
def all_methods(model_dirs, data, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """One run of every method per architecture (result and output folder), with an OOD evaluation set."""
    return every_method_on_every_arch(
        model_dirs, f"jsonl:{data['task']}", tmp_path_factory, "all", eval_tasks=[f"jsonl:{data['ood']}"]
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_runs_on_every_architecture(all_methods, data, arch):
    """Each method yields a finite row per evaluation set, and its training log lists its stages in order, each
    ending no worse on dev than it started: the whole METHODS table works on Llama, Qwen3 and Gemma 3."""
    result, out = all_methods[arch]
    evals = [f"jsonl:{data['task']}", f"jsonl:{data['ood']}"]
    got = sorted((r["method"], r["eval_task"]) for r in result["rows"])
    assert got == sorted((m, e) for m in METHODS for e in evals)
    for row in result["rows"]:
        assert all(math.isfinite(row[k]) for k in ("accuracy", "ece", "nll")), row
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["ece"] <= 1
    logs = {e["method"]: e["stages"] for e in json.loads((out / "train_logs.json").read_text())}
    assert set(logs) == {m for m, method in METHODS.items() if not method.baseline}
    for method, stage_logs in logs.items():
        assert [s["stage"] for s in stage_logs] == [f"{s.loss}:{s.labels}" for s in METHODS[method].stages]
        for log in stage_logs:
            assert log["steps"] >= 1 and log["history"][0]["step"] == 0
            assert log["best_dev_loss"] == min(h["dev_loss"] for h in log["history"])
            assert log["best_dev_loss"] <= log["history"][0]["dev_loss"], (method, log["stage"])
    assert [s["stage"] for s in logs["sft-ia2"]] == ["ce:gold", "ia2:icl"]


def _metrics(peft: PeftModel, tok, task_path: Path, test: list[int]) -> dict:
    """Accuracy and NLL of an adapted model on the test examples, scored independently of the run."""
    task = load_task(f"jsonl:{task_path}")
    encoder = Encoder(task, tok, peft.config.max_position_embeddings)
    plain = [encoder.encode(task.examples[i]) for i in test]
    scores = score(peft.eval(), [p.prompt for p in plain], encoder.label_ids, tok.pad_token_id)
    return summarise(scores, np.array([p.label for p in plain]), [ids[0] for ids in encoder.label_ids])


@pytest.mark.parametrize("kind", tuple(adapter_kinds.PRESETS))
@pytest.mark.parametrize("arch", ARCHS)
def test_every_adapter_kind_trains_saves_and_reloads(model_dirs, data, tmp_path, arch, kind):
    """Each PEFT preset trains IA2 through the run on each architecture, and its saved adapter, reloaded by PEFT on
    a fresh base, scores the test set as the run's row says: what users download is what was measured."""
    cfg = config.make(
        str(model_dirs[arch]), f"jsonl:{data['task']}", methods=["ia2"], adapter=kind, lr=1e-2, max_steps=2, **SMALL
    )
    result = experiment.run(cfg, tmp_path)
    (row,) = result["rows"]
    assert row["method"] == "ia2" and math.isfinite(row["nll"])
    test = json.loads((tmp_path / "manifest.json").read_text())["task"]["test_indices"]
    adapter = tmp_path / "adapters" / "seed0" / "ia2"
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["peft_type"]
        == adapter_kinds.PRESETS[kind]["peft_type"]
    )
    base, tok = loading.load(str(model_dirs[arch]))
    untrained = _metrics(adapters.fresh(base, kind, 0), tok, data["task"], test)
    assert abs(untrained["nll"] - row["nll"]) > 1e-4, "setup: training moved the adapter"
    base, tok = loading.load(str(model_dirs[arch]))
    got = _metrics(PeftModel.from_pretrained(base, str(adapter)), tok, data["task"], test)
    assert got["accuracy"] == row["accuracy"]
    assert got["nll"] == pytest.approx(row["nll"], abs=1e-5)


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


class CountingAdam(torch.optim.Adam):
    """Adam that records each instance and how much state it held when it first stepped."""

    made: list[CountingAdam] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.state_at_first_step: int | None = None
        CountingAdam.made.append(self)

    def step(self, *args, **kwargs):
        if self.state_at_first_step is None:
            self.state_at_first_step = len(self.state)
        return super().step(*args, **kwargs)


def test_ia2_sft_continues_from_ia2s_restored_best_with_a_fresh_optimizer(model_dirs, data, tmp_path, monkeypatch):
    """IA2 → SFT's SFT stage starts from the state IA2 restored (its best on dev, not its last nor a fresh adapter)
    with a new, empty Adam, and `ia2` and `ia2-sft` share one trained IA2 stage: the method is IA2 then SFT."""
    calls, checked = [], []
    real_stage, real_dev_losses = stages.train_lanes, loop.dev_losses

    def recording_stage(model, tap, lanes, stage, pad_id, pack=None):
        (lane,) = lanes
        checked.clear()
        ((log, exit),) = real_stage(model, tap, lanes, stage, pad_id, pack)
        calls.append({"stage": log["stage"], "entry": dict(lane.state), "exit": exit, "checked": [*checked]})
        return [(log, exit)]

    def recording_dev_losses(objective, *args, **kwargs):
        """The dev loss, made to peak at the check after step 2 so that the best state is neither first nor last."""
        (loss,) = real_dev_losses(objective, *args, **kwargs)
        loss += 0.0 if len(checked) == 2 else 100.0
        checked.append((loss, loop.adapter_state(objective.model)))
        return [loss]

    CountingAdam.made = []
    monkeypatch.setattr(stages, "train_lanes", recording_stage)
    monkeypatch.setattr(loop, "dev_losses", recording_dev_losses)
    monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
    cfg = config.make(
        str(model_dirs["llama"]),
        f"jsonl:{data['task']}",
        methods=["ia2", "ia2-sft"],
        eval_every=1,
        patience=10,
        **{**SMALL, "max_epochs": 6},
    )
    experiment.run(cfg, tmp_path)
    assert [c["stage"] for c in calls] == ["ia2:icl", "ce:gold"], "the IA2 stage is trained once for both methods"
    ia2, sft = calls
    best_state, last_state = ia2["checked"][2][1], ia2["checked"][-1][1]
    assert len(ia2["checked"]) == 7 and _differ(best_state, ia2["entry"]) and _differ(best_state, last_state)
    assert not _differ(ia2["exit"], best_state), "IA2 restored its best state"
    assert not _differ(sft["entry"], best_state), "SFT starts from IA2's restored best state"
    assert len(CountingAdam.made) == 2, "one optimizer per trained stage"
    assert [opt.state_at_first_step for opt in CountingAdam.made] == [0, 0], "each stage's Adam starts empty"
