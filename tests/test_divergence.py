"""A diverged stage (a non-finite loss, or a best dev state that is its initial one) is never handed over unnoticed:
by default the run fails in one line naming stage, seed and step; `--on-divergence record` keeps going and records
it in the rows, results.md, the model card and ia2.json."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import small_run, toy_rows, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.config import TrainConfig
from ia2.errors import IA2Error
from ia2.training.stages import Trainee, _check_progress


def _train(model, task, out, *extra) -> list[str]:
    return ["train", "--model", str(model), "--task", f"jsonl:{task}", "--max-epochs", "2", "--out", str(out), *extra]


def test_a_diverged_stage_fails_train_in_one_line(llama_dir, tmp_path, capsys):
    """lr 1000 leaves IA2's dev loss above its start (best step 0); lr 1e30 makes the SFT loss NaN."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    cases = [
        (("--lr", "1000"), "stage ia2:icl of seed 0 (lr 1000) diverged: no dev check beat the initial dev loss"),
        (("--lr", "1e30", "--methods", "sft"), "stage ce:gold of seed 0 (lr 1e+30) diverged: training loss nan"),
    ]
    for flags, needle in cases:
        assert cli.main(_train(llama_dir, task, tmp_path / "a", *flags)) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert needle in err and "--on-divergence record" in err, err
        assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir()), "no adapter is handed over"


def test_record_keeps_a_diverged_adapter_and_says_so_in_its_card(llama_dir, tmp_path, caplog):
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    out = tmp_path / "a"
    with caplog.at_level(logging.WARNING, logger="ia2"):
        assert cli.main(_train(llama_dir, task, out, "--lr", "1000", "--on-divergence", "record")) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "stage ia2:icl of seed 0" in warned[0] and "recorded" in warned[0]
    assert "\n" not in warned[0]
    record = json.loads((out / "ia2.json").read_text())
    assert record["diverged"].startswith("ia2:icl: no dev check beat the initial dev loss")
    card = (out / "README.md").read_text()
    assert f"**Diverged, not to be used as trained**: {record['diverged']}." in card
    caplog.clear()
    inputs = write_jsonl(tmp_path / "in.jsonl", toy_rows(2))
    with caplog.at_level(logging.WARNING, logger="ia2"):
        assert cli.main(["predict", str(out), "--input", str(inputs), "--out", str(tmp_path / "p.jsonl")]) == 0
    [warned] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    diverged = f"its training diverged ({record['diverged']})"
    assert warned == f"{out}: {diverged}; kept by --on-divergence record, not to be used as trained"


def test_a_run_records_divergence_in_its_rows_or_fails(llama_dir, tmp_path, capsys):
    """Recorded: the IA2 row says why, and, its adapter being the initial one, scores exactly as zero-shot."""
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    small = {"methods": "zero-shot,ia2", "lr": 1000, "max_epochs": 2}
    assert cli.main(small_run(llama_dir, f"jsonl:{task}", tmp_path / "fail", **small, on_divergence="fail")) == 2
    assert "stage ia2:icl of seed 0 (lr 1000) diverged" in capsys.readouterr().err
    assert not list((tmp_path / "fail").glob("rows/*/seed0/ia2.json")), "no row of the diverged adapter"

    out = tmp_path / "record"
    assert cli.main(small_run(llama_dir, f"jsonl:{task}", out, **small, on_divergence="record")) == 0
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["ia2"]["diverged"].startswith("ia2:icl: no dev check beat the initial dev loss")
    assert rows["ia2"]["accuracy"] == rows["zero-shot"]["accuracy"] and rows["ia2"]["nll"] == rows["zero-shot"]["nll"]
    assert f"ia2 seed 0 ({rows['ia2']['diverged']})" in (out / "results.md").read_text()
    (logs,) = json.loads((out / "train_logs.json").read_text())
    assert logs["stages"][0]["best_step"] == 0 and logs["stages"][0]["steps"] > 0


def _stage_log(improved: bool) -> dict:
    """A finite stage's log whose dev checks beat its start or not."""
    return {"stage": "ce:gold", "steps": 10, "best_dev_loss": 0.7, "diverged": None, "improved": improved}


def test_only_a_first_stage_that_beats_no_dev_check_is_a_divergence(caplog):
    """A method's first stage handing over its fresh adapter is the base model passed off as trained; a later stage
    (SFT after IA2) that beats no dev check keeps what the stage before it trained, as early stopping means it to."""
    trainee = Trainee(0, TrainConfig(on_divergence="fail"), None, {})
    with caplog.at_level(logging.INFO, logger="ia2.training.stages"):
        later = _stage_log(improved=False)
        _check_progress(trainee, later, depth=1)
    assert later["diverged"] is None and "no dev check beat the state it started from" in caplog.text
    first = _stage_log(improved=False)
    with pytest.raises(IA2Error, match=r"stage ce:gold of seed 0 \(lr [^)]+\) diverged: no dev check beat the initial"):
        _check_progress(trainee, first, depth=0)
    trained = _stage_log(improved=True)
    _check_progress(trainee, trained, depth=0)
    assert trained["diverged"] is None


def test_without_restore_best_a_first_stage_hands_over_its_trained_state():
    """With restore_best off the last state is handed over, not the fresh adapter: no divergence."""
    stage_log = _stage_log(improved=False)
    _check_progress(Trainee(0, TrainConfig(on_divergence="fail", restore_best=False), None, {}), stage_log, depth=0)
    assert stage_log["diverged"] is None


def test_on_divergence_does_not_change_the_run_key():
    """Rerunning with --on-divergence record, as the failure line suggests, reuses the finished rows."""
    fail, record = (config.make("m", "t", on_divergence=mode) for mode in ("fail", "record"))
    assert config.key(fail) == config.key(record)
