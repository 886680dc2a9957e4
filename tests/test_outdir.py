"""A run's output folder and what it leaves there: one configuration per folder (refused before the model loads,
replaced whole by --overwrite), bad folders refused in one line, and saved adapters that name their base model as the
user did and carry a model card of the run."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import small_run
from ia2 import config
from ia2.data.tasks import Example, Task
from ia2.model import loading
from ia2.model.loading import Embedded
from ia2.run.card import metadata
from ia2.training import stages
from test_errors import error_lines, run_cli


def args(model: Path | str, task: Path, out: Path, *extra: str, methods: str = "zero-shot,ia2") -> list[str]:
    return small_run(model, f"jsonl:{task}", out, *extra, methods=methods)


def never_load(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(loading, "load", load)


def refused(argv: list[str], capsys, monkeypatch) -> str:
    """The one stderr line of a command refused with exit 2 before any model loads."""
    with monkeypatch.context() as mp:
        never_load(mp)
        code, err = run_cli(argv, capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, (code, lines)
    return lines[0]


def files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_another_configuration_is_refused_before_the_model_loads(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """A folder holds one configuration's rows: another --lr there is refused at once, naming the folder and the
    setting that differs (not the seeds, which a run may add to its folder), so no mixed results are reported."""
    out = tmp_path / "out"
    assert run_cli(args(llama_dir, toy_jsonl, out), capsys)[0] == 0
    before = files(out)
    line = refused(args(llama_dir, toy_jsonl, out, "--lr", "0.01", "--seeds", "0,1"), capsys, monkeypatch)
    assert line.startswith(f"ia2: error: {out} holds a run of another configuration (train.lr: 0.001 → 0.01)")
    assert "--overwrite" in line and "seeds" not in line
    assert files(out) == before, "the refused run wrote nothing"


def test_overwrite_replaces_the_earlier_run_entirely(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """--overwrite leaves nothing of the old configuration (adapter, rows, reports); the original command is then
    refused in turn, and rerunning the new one resumes from its rows instead of training again."""
    out = tmp_path / "out"
    original = args(llama_dir, toy_jsonl, out)
    assert run_cli(original, capsys)[0] == 0
    time.sleep(0.02)
    (tmp_path / "start").write_text("")
    start = (tmp_path / "start").stat().st_mtime_ns
    new = args(llama_dir, toy_jsonl, out, "--lr", "0.01", "--overwrite", methods="zero-shot,sft")
    assert run_cli(new, capsys)[0] == 0
    written = files(out)
    assert written and all(mtime >= start for mtime in written.values()), "a file of the old run survived"
    (key,) = [p.name for p in (out / "rows").iterdir()]
    assert sorted(p.name for p in (out / "rows" / key / "seed0").iterdir()) == ["sft.json", "zero-shot.json"]
    assert [p.name for p in (out / "adapters" / "seed0").iterdir()] == ["sft"]
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["key"] == key and result["config"]["train"]["lr"] == 0.01
    assert sorted(r["method"] for r in result["rows"]) == ["sft", "zero-shot"]
    assert "ia2" not in (out / "results.md").read_text()
    assert "train.lr: 0.01 → 0.001" in refused(original, capsys, monkeypatch)

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun of the same configuration must not retrain")

    monkeypatch.setattr(stages, "train_lanes", no_training)
    rows = {p: m for p, m in files(out).items() if "rows" in p.parts}
    assert run_cli(new, capsys)[0] == 0, "the same command again (with --overwrite) resumes"
    assert {p: m for p, m in files(out).items() if "rows" in p.parts} == rows


def test_a_run_that_failed_before_writing_does_not_claim_its_folder(llama_dir, toy_jsonl, tmp_path, capsys):
    """A mistyped --model fails after the folder is claimed; the corrected command must not be refused as another
    configuration, since the folder holds nothing of the failed run."""
    out = tmp_path / "out"
    code, err = run_cli(args(tmp_path / "no-such-model", toy_jsonl, out, methods="zero-shot"), capsys)
    assert code == 2 and "no-such-model" in err
    assert run_cli(args(llama_dir, toy_jsonl, out, methods="zero-shot"), capsys)[0] == 0
    assert json.loads((out / "results.json").read_text())["config"]["model"] == str(llama_dir)


def test_out_that_is_a_file_is_refused(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """--out naming an existing file: one line, exit 2, before the model loads, and the file is left alone."""
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    line = refused(args(llama_dir, toy_jsonl, out), capsys, monkeypatch)
    assert line == f"ia2: error: {out}: the output folder is a file"
    assert out.read_text() == "keep me"


def test_unwritable_out_is_refused(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """An output folder that cannot be written: one line, exit 2, before the model loads. Root writes through
    permissions, so there the folder is placed under a file instead."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = locked / "out"
    if os.access(locked, os.W_OK):
        (tmp_path / "file.txt").write_text("")
        out = tmp_path / "file.txt" / "out"
    try:
        line = refused(args(llama_dir, toy_jsonl, out), capsys, monkeypatch)
    finally:
        locked.chmod(0o700)
    assert re.fullmatch(rf"ia2: error: {re.escape(str(out))}: cannot write the output folder \(.+\)", line), line


@pytest.fixture
def embedded_tiny(llama_dir, monkeypatch) -> str:
    """The tiny Llama as an embedded model name, already converted into the (test-private) cache."""
    shutil.copytree(llama_dir, loading.cache_root() / "models" / "tiny-llama")
    monkeypatch.setitem(loading.EMBEDDED, "tiny-llama", Embedded(gguf=lambda: Path("unused.gguf"), package="none"))
    return "tiny-llama"


@pytest.mark.parametrize("named", ["relative path", "embedded name"])
def test_adapter_records_the_base_model_as_the_user_named_it(
    llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch, embedded_tiny, named
):
    """adapter_config.json and the card name the base model as given to --model, not the folder it resolved to: a
    shared adapter must not point at a path on the machine that trained it."""
    if named == "relative path":
        monkeypatch.chdir(llama_dir.parent)
        model = f"./{llama_dir.name}/"
    else:
        model = embedded_tiny
    out = tmp_path / "out"
    assert run_cli(args(model, toy_jsonl, out), capsys)[0] == 0
    saved = json.loads((out / "adapters" / "seed0" / "ia2" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == model
    card = (out / "adapters" / "seed0" / "ia2" / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {model}\n")


def test_model_card_describes_the_run(llama_dir, toy_jsonl, tmp_path, capsys):
    """The card names base model, task, method, N, seed, prompt template, label words and training settings, and
    reports the row's test metrics: an adapter found alone says how it was made and how well it did."""
    out = tmp_path / "out"
    assert run_cli(args(llama_dir, toy_jsonl, out, "--lr", "0.002"), capsys)[0] == 0
    result = json.loads((out / "results.json").read_text())
    (row,) = [r for r in result["rows"] if r["method"] == "ia2"]
    card = (out / "adapters" / "seed0" / "ia2" / "README.md").read_text()
    task = f"jsonl:{toy_jsonl}"
    assert f"adapter for {llama_dir}\n" in card
    assert f"method `ia2` on task `{task}`: N = 4 labelled examples, seed 0." in card
    assert 'template:    "Question: {question}\\nAnswer:"' in card
    assert "Labels: `no`, `yes`." in card
    (line,) = [line for line in card.splitlines() if line.startswith(f"| {task} |")]
    assert line.split(" | ")[1] == f"{row['accuracy']:.3f}"
    settings = json.loads(card.split("```json\n")[1].split("```")[0])
    assert settings["train"] == result["config"]["train"] and settings["train"]["lr"] == 0.002
    assert settings["adapter"] == result["config"]["adapter"]
    record = json.loads((out / "adapters" / "seed0" / "ia2" / "ia2.json").read_text())
    assert (record["base_model"], record["method"], record["seed"]) == (str(llama_dir), "ia2", 0)
    assert record["config_key"] == result["config"]["key"]
    assert record["task"]["template"] == "Question: {question}\nAnswer:" and record["task"]["labels"] == ["no", "yes"]
    assert (record["task"]["answer_prefix"], record["chat"]) == (" ", False)
    hub = ModelCard(card).data
    assert (hub.base_model, hub.library_name, hub.datasets) == (str(llama_dir), "peft", None)
    assert hub.tags == ["ia2", "arxiv:2509.22621"], "the method's name is a tag once"


def test_a_hub_task_names_its_dataset_in_the_card_metadata():
    """A task read from the hub names its dataset id (the revision dropped), which the hub links to."""
    task = Task("sst2", (Example("q", "a"),), ("a",), source="hub:stanfordnlp/sst2@8d51e7e")
    front = metadata(config.make("Qwen/Qwen3-4B-Base", "sst2"), task, "ia2-sft").to_yaml()
    data = ModelCard(f"---\n{front}\n---\n").data
    assert (data.base_model, data.datasets) == ("Qwen/Qwen3-4B-Base", ["stanfordnlp/sst2"])
    assert data.tags == ["ia2", "ia2-sft", "arxiv:2509.22621"]
