"""`ia2 run` as users drive it: a YAML --config overridden by flags, --help generated from the config, old flags
answered with today's spelling, and Ctrl-C ending in one line that says how to resume."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import yaml

from ia2 import config
from ia2.commands import cli, flags
from ia2.run import experiment
from test_errors import error_lines, run_cli
from test_outdir import args, refused


def run_options() -> dict[str, argparse.Action]:
    """The `ia2 run` parser's options by flag."""
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]._option_string_actions


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_settings_in_every_spelling_with_flags_overriding(llama_dir, toy_jsonl, tmp_path, capsys):
    """A run file may give settings in sections, by dotted path or by name, and its `out`; a flag beats the file,
    and results.json records the values the run used."""
    run_yaml = write_yaml(
        tmp_path / "run.yaml",
        {
            "model": str(llama_dir),
            "task": f"jsonl:{toy_jsonl}",
            "methods": ["zero-shot", "sft"],
            "seeds": [0],
            "n_test": 10,
            "train": {"lr": 0.01, "patience": 7},
            "train.max_epochs": 2,
            "n_train": 4,
            "out": str(tmp_path / "from-yaml"),
        },
    )
    assert run_cli(["run", "--config", str(run_yaml), "--lr", "0.001"], capsys)[0] == 0
    cfg = json.loads((tmp_path / "from-yaml" / "results.json").read_text())["config"]
    assert cfg["train"]["lr"] == 0.001, "the flag wins over the file"
    assert (cfg["train"]["patience"], cfg["train"]["max_epochs"], cfg["data"]["n_train"]) == (7, 2, 4)
    assert cfg["methods"] == ["zero-shot", "sft"] and cfg["seeds"] == [0]


def test_a_bad_value_is_named_as_it_was_written(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """The same bad learning rate is named `FILE: train.lr` from a file and `--lr` from the command line, before
    any model loads: the user is pointed at the place to fix."""
    base = {"model": str(llama_dir), "task": f"jsonl:{toy_jsonl}", "out": str(tmp_path / "out")}
    run_yaml = write_yaml(tmp_path / "run.yaml", {**base, "train": {"lr": -1}})
    line = refused(["run", "--config", str(run_yaml)], capsys, monkeypatch)
    assert line == f"ia2: error: {run_yaml}: train.lr must be positive, got -1.0"
    line = refused(args(llama_dir, toy_jsonl, tmp_path / "out", "--lr", "-1"), capsys, monkeypatch)
    assert line == "ia2: error: --lr must be positive, got -1.0"


@pytest.mark.parametrize("out", [None, ["a", "b"], ""])
def test_a_bad_out_in_the_run_file_is_named(tmp_path, capsys, monkeypatch, out):
    """`out:` that is not a folder path ends in one line naming the file and `out`, not a traceback."""
    run_yaml = write_yaml(tmp_path / "run.yaml", {"model": "m", "task": "t", "out": out})
    line = refused(["run", "--config", str(run_yaml)], capsys, monkeypatch)
    assert line == f"ia2: error: {run_yaml}: out must be a folder path, got {out!r}"


def test_help_shows_every_settings_default(capsys):
    """`ia2 run --help` lists a flag for every setting with its default, so the help is the configuration."""
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "--lr X Adam learning rate (constant) [default: 0.001]" in text
    assert "--n-train INT labelled training examples N [default: 8]" in text
    assert "[default: zero-shot,icl,sft,ia2,ia2-sft]" in text and "[default: lora]" in text
    options = run_options()
    for path in config.paths():
        action = options[config.flag(path)]
        assert action.dest == path and config.flag(path) in text
        shown = "[required]" if path in config.REQUIRED else f"[default: {flags.shown(config.default(path))}]"
        assert action.help.replace("%%", "%").endswith(shown), (path, action.help)


def test_a_shown_default_typed_back_is_the_default(llama_dir, toy_jsonl):
    """Every default the help shows (other than unset ones and on/off switches) parses back to that default: the help
    writes values as a user types them."""
    given = ["run", "--model", str(llama_dir), "--task", f"jsonl:{toy_jsonl}"]
    typed = []
    for path in config.paths():
        value = config.default(path)
        if path not in config.REQUIRED and config.annotation(path) is not bool and value not in (None, ()):
            typed += [config.flag(path), flags.shown(value)]
    assert cli.config_from_args(cli.parse(given + typed))[0] == cli.config_from_args(cli.parse(given))[0]


@pytest.mark.parametrize(
    "old, new",
    [
        (["--n", "4"], "--n is now --n-train"),
        (["--epochs=3"], "--epochs is now --max-epochs"),
        (["--lora-r", "16"], '--lora-r is now --adapter \'{"peft_type": "LORA", "r": 16}\''),
    ],
)
def test_old_flags_name_their_new_spelling(llama_dir, toy_jsonl, tmp_path, capsys, old, new):
    """A flag of ia2 0.1 ends in one line giving today's spelling (exit 2), so old scripts are easy to update."""
    code, err = run_cli(["run", "--model", str(llama_dir), "--task", f"jsonl:{toy_jsonl}", *old], capsys)
    assert code == 2
    assert error_lines(err) == [f"ia2: error: {new}"]


def test_a_repeated_seed_is_refused(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """--seeds 0,0 would count one sample twice in mean ± std: refused in one line before the model loads."""
    argv = args(llama_dir, toy_jsonl, tmp_path / "out")
    argv[argv.index("--seeds") + 1] = "0,0"
    line = refused(argv, capsys, monkeypatch)
    assert line == "ia2: error: --seeds names seed 0 twice: each seed is one sample of mean ± std"


def test_ctrl_c_says_how_to_resume_and_the_rerun_does(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch, caplog):
    """Ctrl-C mid-run prints one line (no traceback) and exits 130; the same command then resumes, saying in one
    log line which finished rows it reuses."""
    argv = args(llama_dir, toy_jsonl, tmp_path / "out", methods="zero-shot,icl,ia2")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(experiment, "method_rows", interrupt)
        code, err = run_cli(argv, capsys)
    assert code == 130
    assert error_lines(err) == ["ia2: interrupted; finished rows are kept: rerun the same command to resume"]
    with caplog.at_level(logging.INFO, logger="ia2.run.experiment"):
        assert run_cli(argv, capsys)[0] == 0
    reuse = [r.getMessage() for r in caplog.records if "reusing" in r.getMessage()]
    assert reuse == ["seed 0: reusing the finished rows of zero-shot, icl"]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["ia2", "icl", "zero-shot"]


def test_version_and_every_commands_help_shows_defaults(capsys):
    """`ia2 --version` names the installed version; each command's --help gives its options' defaults."""
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"ia2 {metadata.version('ia2')}"
    for command, needle in (
        ("demo", "(default: runs/demo)"),
        ("sweep", "(default: 0/1)"),
        ("report", "(default: None, the sweep's own"),
    ):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert needle in " ".join(capsys.readouterr().out.split()), command
