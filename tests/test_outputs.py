"""Nothing a user points at is destroyed and two commands never write one output at once: output paths that are
links, devices, FIFOs, the input file or unwritable are refused before any model loads; an output is locked while a
command writes it, a stale lock taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import small_run
from ia2 import paths
from ia2.commands.cli import main as cli_main
from ia2.errors import IA2Error
from ia2.run import lock
from test_errors import error_lines
from test_outdir import refused


def run_args(model: Path, task: Path, out: Path, *extra: str) -> list[str]:
    return small_run(model, f"jsonl:{task}", out, *extra, methods="zero-shot")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def hold(path: Path, pid: int, command: str = "ia2 run --lr 0.01") -> None:
    """A lock file as another ia2 command leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": socket.gethostname(), "command": command, "since": "12:00:00"}
    path.write_text(json.dumps(record))


# A. Output paths


def test_predict_refuses_a_link_a_fifo_and_its_input_as_out(tmp_path, toy_jsonl, capsys, monkeypatch):
    """A symbolic link, a FIFO, the input file itself, or a link where the metrics go beside the predictions: one line
    before anything loads, and each is left as it was."""
    kept = tmp_path / "kept.jsonl"
    kept.write_text("keep me\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(kept)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    beside = tmp_path / "p.jsonl"
    (tmp_path / "p.metrics.json").symlink_to(kept)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(toy_jsonl.read_text())
    cases = [
        (link, labelled, f"{link}: the output file is a symbolic link"),
        (fifo, labelled, f"{fifo}: the output file is a FIFO"),
        (labelled, labelled, f"{labelled}: the output file is the input file {labelled}"),
        (beside, labelled, f"{tmp_path / 'p.metrics.json'}: the output file is a symbolic link"),
    ]
    for out, inputs, needle in cases:
        argv = ["predict", str(tmp_path / "adapter"), "--input", str(inputs), "--out", str(out)]
        assert refused(argv, capsys, monkeypatch).startswith(f"ia2: error: {needle}")
    assert link.is_symlink() and (tmp_path / "p.metrics.json").is_symlink() and kept.read_text() == "keep me\n"
    assert fifo.is_fifo() and labelled.read_text() == toy_jsonl.read_text()


def test_a_device_is_refused_as_an_output():
    """/dev/null as an output file, or as the folder of one, is refused (and only looked at)."""
    with pytest.raises(IA2Error, match="^/dev/null: the output file is a device$"):
        paths.check_output(Path("/dev/null"))
    with pytest.raises(IA2Error, match=r"^/dev/null/x: cannot write the output file \(/dev/null is a file"):
        paths.check_output(Path("/dev/null/x"))


def test_atomic_writes_never_replace_a_link(tmp_path):
    """The last guard: an atomic write onto a symbolic link is refused, the link and its target left alone."""
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(IA2Error, match="a symbolic link, not a file or folder ia2 may replace"):
        paths.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["run", "train", "export"])
def test_folder_outputs_refuse_links_and_unwritable(command, llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """run --out, train --out and export --merged: a symbolic link, or a folder that cannot be made (under a file),
    is one line before any model loads (train's adapter would otherwise be lost after training)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    (tmp_path / "file.txt").write_text("")
    for out, needle in (
        (tmp_path / "link", "the output folder is a symbolic link"),
        (tmp_path / "file.txt" / "out", "cannot write the output folder"),
    ):
        if command == "export":
            argv = ["export", str(tmp_path / "adapter"), "--merged", str(out)]
            monkeypatch.setattr("ia2.run.saved.adapter_config", lambda a: {"peft_type": "LORA"})
            monkeypatch.setattr("ia2.run.saved.load_record", lambda a: {})
        else:
            argv = run_args(llama_dir, toy_jsonl, out)
            if command == "train":
                argv = ["train", "--model", str(llama_dir), "--task", f"jsonl:{toy_jsonl}", "--out", str(out)]
        assert refused(argv, capsys, monkeypatch).startswith(f"ia2: error: {out}: {needle}")
    assert not any(elsewhere.iterdir()) and (tmp_path / "link").is_symlink()


# B. Locks


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_folder_in_use_is_refused_naming_its_holder(command, llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """A second command into an output another live ia2 process writes: one line naming that process, before any
    model loads; the holder's lock stays."""
    out = tmp_path / "out"
    held = lock.inside(out) if command == "run" else lock.beside(out)
    hold(held, os.getppid())
    argv = run_args(llama_dir, toy_jsonl, out)
    if command == "train":
        argv = ["train", "--model", str(llama_dir), "--task", f"jsonl:{toy_jsonl}", "--out", str(out)]
    line = refused(argv, capsys, monkeypatch)
    assert line.startswith(f"ia2: error: {held.parent}: in use by `ia2 run --lr 0.01` (pid {os.getppid()} on ")
    assert json.loads(held.read_text())["pid"] == os.getppid()
    assert not (out / "run.json").exists()


def test_a_stale_lock_is_taken_over_with_a_log_line(llama_dir, toy_jsonl, tmp_path, capsys, caplog):
    """A lock left by a process of this host that no longer runs (killed) is taken over, saying so; the run
    finishes and leaves no lock behind."""
    from test_errors import run_cli

    out = tmp_path / "out"
    pid = dead_pid()
    hold(lock.inside(out), pid)
    with caplog.at_level(logging.WARNING, logger="ia2.run.lock"):
        assert run_cli(run_args(llama_dir, toy_jsonl, out), capsys)[0] == 0
    assert [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()] == [
        f"{lock.inside(out).absolute()}: taking over the lock of pid {pid} (`ia2 run --lr 0.01`), which is no "
        "longer running"
    ]
    assert (out / "results.json").is_file() and not lock.inside(out).exists()


def test_a_lock_is_held_while_the_command_writes_and_names_it(tmp_path):
    """While held, the lock file names this process and the command; a process may take its own lock again (a sweep
    into its run folders), and the lock goes only when the outermost holder lets go."""
    path = lock.inside(tmp_path)
    with lock.holding([path]):
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["command"]
        with lock.holding([path]):
            assert path.exists()
        assert path.exists()
    assert not path.exists()


def test_a_lock_is_released_when_the_command_fails(tmp_path):
    path = lock.beside(tmp_path / "adapter")
    with pytest.raises(RuntimeError), lock.holding([path]):
        raise RuntimeError
    assert not path.exists()


# C. One line where a traceback was


def test_a_cuda_device_without_cuda_is_refused_at_start_up(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch sees a CUDA device")
    line = refused(run_args(llama_dir, toy_jsonl, tmp_path / "out", "--device", "cuda"), capsys, monkeypatch)
    assert (
        line
        == "ia2: error: --device cuda: this torch sees no CUDA device (a CPU-only build, or no GPU): use --device cpu"
    )


def test_a_corrupt_row_or_run_json_is_set_aside_and_recomputed(llama_dir, toy_jsonl, tmp_path, capsys, caplog):
    """A row truncated mid-write and a run.json that no longer parses are named in a warning, renamed *.corrupt and
    recomputed, instead of failing to parse after being counted as finished."""
    from test_errors import run_cli

    out = tmp_path / "out"
    argv = small_run(llama_dir, f"jsonl:{toy_jsonl}", out, methods="zero-shot,icl")
    assert run_cli(argv, capsys)[0] == 0
    (row,) = out.glob("rows/*/seed0/icl.json")
    whole = json.loads(row.read_text())
    row.write_text(row.read_text()[:20])
    (out / "run.json").write_text('{"key": ')
    with caplog.at_level(logging.WARNING, logger="ia2.run.outdir"):
        assert run_cli(argv, capsys)[0] == 0
    warned = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert warned == [
        f"{out / 'run.json'}: corrupt, set aside as run.json.corrupt and recomputed",
        f"{row}: corrupt, set aside as icl.json.corrupt and recomputed",
    ]
    assert json.loads(row.read_text())["accuracy"] == whole["accuracy"]
    assert (out / "run.json.corrupt").read_text() == '{"key": ' and json.loads((out / "run.json").read_text())["key"]


def test_a_corrupt_row_in_a_report_is_one_line(llama_dir, toy_jsonl, tmp_path, capsys):
    from test_errors import run_cli

    out = tmp_path / "out"
    assert run_cli(small_run(llama_dir, f"jsonl:{toy_jsonl}", out, methods="zero-shot"), capsys)[0] == 0
    (row,) = out.glob("rows/*/seed0/zero-shot.json")
    row.write_text("{")
    code, err = run_cli(["report", str(out)], capsys)
    assert code == 2
    assert (
        err
        == f"ia2: error: {row}: corrupt; rerun the run or sweep that wrote it, which sets it aside and recomputes it\n"
    )


def test_a_full_disk_is_one_line_and_keeps_the_finished_rows(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """No space left while a row is written: one line naming the file, exit 2, the rows written before it kept."""
    import errno

    from ia2.run import experiment
    from test_errors import run_cli

    written = []

    def full(path, obj):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        paths.write_json(path, obj)

    monkeypatch.setattr(experiment, "write_json", full)
    code, err = run_cli(small_run(llama_dir, f"jsonl:{toy_jsonl}", tmp_path / "out", methods="zero-shot,icl"), capsys)
    (line,) = error_lines(err)
    assert code == 2 and line.startswith(f"ia2: error: {tmp_path / 'out' / 'rows'}")
    assert line.endswith(": No space left on device; finished rows are kept: rerun the same command to resume")
    assert json.loads(written[0].read_text())["method"] == "icl"


def test_train_says_what_a_stop_leaves(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """Ctrl-C, or weights that cannot be written (a full disk), in `ia2 train`: one line saying no adapter was saved
    (train has no rows to resume from); the folder holds nothing half-written."""
    from safetensors import SafetensorError

    from ia2.model import adapters
    from test_errors import run_cli

    argv = ["train", "--model", str(llama_dir), "--task", f"jsonl:{toy_jsonl}", "--max-steps", "1"]
    for raised, code, line in (
        (KeyboardInterrupt(), 130, "ia2: interrupted; no adapter was saved: rerun the command to train it again"),
        (
            SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
            2,
            "ia2: error: cannot write the weights (Error while serializing: I/O error: No space left on device (os "
            "error 28)); no adapter was saved: rerun the command to train it again",
        ),
    ):

        def stop(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(adapters, "save", stop)
        out = tmp_path / type(raised).__name__
        got, err = run_cli([*argv, "--out", str(out)], capsys)
        assert (got, error_lines(err)) == (code, [line])
        assert not out.exists() and not lock.beside(out).exists()


# D. Shards


def two_rates(path: Path, model: Path, task: Path, pack: int = 1) -> Path:
    """A sweep of one grid point at two learning rates: one cell of two configurations."""
    path.write_text(
        f"methods: [zero-shot]\nseeds: [0]\nout: {path.parent / 'out'}\n"
        f'grid: {{model: ["{model}"], task: ["jsonl:{task}"]}}\n'
        f"tune: {{lr: [0.001, 0.01]}}\nfixed: {{n_train: 4, n_test: 10, pack: {pack}}}\n"
    )
    return path


def test_shards_split_configurations_and_dry_run_lists_a_shards_own(llama_dir, toy_jsonl, tmp_path, capsys):
    """Two learning rates at one grid point: --shard 0/2 and 1/2 run one each (their dry runs list exactly that), and
    a K with a shard left empty is refused in one line."""
    from test_errors import run_cli

    plan = two_rates(tmp_path / "sweep.yaml", llama_dir, toy_jsonl)
    listed = []
    for index in (0, 1):
        capsys.readouterr()
        assert cli_main(["sweep", str(plan), "--dry-run", "--shard", f"{index}/2"]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        listed.append(line.split()[0])
    assert len(set(listed)) == 2, "each shard lists one configuration of its own"
    assert run_cli(["sweep", str(plan), "--shard", "1/2"], capsys)[0] == 0
    ran = [p.parents[3] for p in (tmp_path / "out").glob("runs/**/rows/*/seed0/zero-shot.json")]
    assert [str(p) for p in ran] == [listed[1]]
    code, err = run_cli(["sweep", str(plan), "--shard", "0/3"], capsys)
    assert (code, error_lines(err)) == (
        2,
        [
            "ia2: error: --shard 0/3: the sweep has 2 configurations to split (a cell packed with pack > 1 counts "
            "as one), so K must be at most 2"
        ],
    )


def test_a_packed_cell_is_one_unit_of_a_shard(llama_dir, toy_jsonl, tmp_path, capsys):
    from ia2.run import sweep

    plan = sweep.load(two_rates(tmp_path / "sweep.yaml", llama_dir, toy_jsonl, pack=2))
    assert sweep.units(plan.configs()) == [[0, 1]] and sweep.share(plan.configs(), (0, 1)) == [0, 1]
    with pytest.raises(IA2Error, match="^--shard 1/2: the sweep has 1 configuration to split"):
        sweep.share(plan.configs(), (1, 2))


# E. Messages and small things


def test_tqdm_disable_silences_every_progress_bar():
    """TQDM_DISABLE=1, as the README says, silences the bars ia2 draws itself (tqdm reads it when imported)."""
    code = (
        "from ia2.model import distributed\n"
        "assert list(distributed.map_batches(None, [1, 2], lambda b: b, desc='scoring')) == [1, 2]\n"
    )
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    env.pop("TQDM_DISABLE")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "scoring" in done.stderr, "without it the bar is drawn"


def test_small_messages_say_what_is_wrong(llama_dir, toy_jsonl, tmp_path, capsys, monkeypatch):
    """A folder as --input or --unlabelled, a negative --icl, a missing report folder, an old adapter flag with the
    user's value: each one line that says so."""
    folder = tmp_path / "folder"
    folder.mkdir()
    adapter = tmp_path / "adapter"
    predict = ["predict", str(adapter), "--out", str(tmp_path / "p.jsonl")]
    cases = [
        ([*predict, "--input", str(folder)], f"ia2: error: {folder}: a folder, not a JSONL file"),
        (
            [*run_args(llama_dir, toy_jsonl, tmp_path / "out"), "--unlabelled", str(folder)],
            f"ia2: error: {folder}: a folder, not a JSONL file",
        ),
        (["report", str(tmp_path / "missing")], f"ia2: error: {tmp_path / 'missing'}: no such folder"),
        (
            ["run", "--lora-r", "32"],
            'ia2: error: --lora-r is now --adapter \'{"peft_type": "LORA", "r": 32}\'',
        ),
        (
            ["run", "--lora-targets=q_proj,v_proj"],
            'ia2: error: --lora-targets is now --adapter \'{"peft_type": "LORA", "target_modules": ["q_proj", '
            '"v_proj"]}\'',
        ),
    ]
    for argv, line in cases:
        from test_errors import run_cli

        code, err = run_cli(argv, capsys)
        assert (code, error_lines(err)) == (2, [line])
    monkeypatch.setattr("ia2.run.saved.load_record", lambda a: {"task": {}, "train_examples": [{}] * 6})
    monkeypatch.setattr("ia2.commands.predict.task_of", lambda record, examples: None)
    code, err = run_cli([*predict, "--input", str(toy_jsonl), "--icl", "-2"], capsys)
    assert (code, error_lines(err)) == (2, ["ia2: error: --icl -2: the number of demonstrations must be at least 0"])


def test_a_run_names_the_files_it_wrote(tmp_path, capsys, monkeypatch):
    """A generative run draws no reliability diagram, so the closing line does not name one."""
    from ia2.commands import cli

    def wrote(cfg, out, overwrite=False):
        for name in ("results.json", "results.md", "manifest.json"):
            (out / name).write_text("x")
        (out / "adapters").mkdir()

    monkeypatch.setattr("ia2.run.experiment.run", wrote)
    (tmp_path / "out").mkdir()
    assert cli.main(["run", "--model", "m", "--task", "t", "--out", str(tmp_path / "out")]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"written to {tmp_path / 'out'}/ (results.json, results.md, manifest.json, adapters/)"


def test_train_help_hides_the_flags_train_refuses(capsys):
    from ia2.commands import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    shown = capsys.readouterr().out
    assert "--lr" in shown and "--n-test" not in shown and "--icl-demos" not in shown and "--n-train" not in shown


@pytest.mark.parametrize(
    "text, line",
    [
        ("model: m\ntask: t\nlr: 0.01\nn_test: 5\nlr: 0.1\n", "{file}:5: key 'lr' given twice (first on line 3)"),
        ('model: m\ntask: t\ntrain:\n  lr: "0.001"\n', "{file}: train.lr must be a number, got the quoted text "),
        ("model: m\ntask: t\nn_test: '5'\n", "{file}: n_test must be an integer, got the quoted text '5'"),
    ],
)
def test_yaml_keys_given_twice_and_quoted_numbers_are_refused(text, line, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    got = refused(["run", "--config", str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert got.startswith("ia2: error: " + line.format(file=path))


def test_yaml_numbers_in_plain_notation_still_read(tmp_path):
    """`lr: 1e-3` (YAML 1.1 reads it as text, but unquoted) stays a number, as before."""
    from ia2 import config

    path = tmp_path / "run.yaml"
    path.write_text("model: m\ntask: t\nlr: 1e-3\n")
    assert config.build(config.flatten(config.load_yaml(path), str(path))).train.lr == 0.001


def test_a_sweep_setting_both_fixed_and_tuned_is_refused(tmp_path):
    from ia2.run import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text("methods: [sft]\nseeds: [0]\nfixed: {model: m, task: t, train: {lr: 0.1}}\ntune: {lr: [1, 2]}\n")
    with pytest.raises(IA2Error, match=rf"^{path}: train.lr is both in fixed and in tune; give it in one of them$"):
        sweep.load(path)


# F. Start-up


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["run", "--help"],
        ["train", "--help"],
        ["run", "--model", "m", "--task", "t", "--lr", "-1"],
        ["run", "--model", "m", "--task", "t", "--out", "/dev/null"],
        ["predict", "adapter", "--input", "in.jsonl", "--out", "/dev/null"],
        ["export", "adapter", "--merged", "/dev/null"],
        ["data", "--help"],
    ],
)
def test_help_version_and_refusals_load_no_heavy_module(argv):
    """`ia2 --version`, the help and a refused flag start in a fraction of a second: torch, transformers, peft,
    datasets and matplotlib (seconds to import) are imported only by the commands that use them."""
    code = (
        "import sys\nfrom ia2.commands import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'peft', 'datasets', 'matplotlib', 'accelerate')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr


def test_saving_an_adapter_asks_no_hub(llama_dir, tmp_path, monkeypatch):
    """PEFT's default save looks the base model's name up on the hub (to see whether its vocabulary was resized); an
    adapter recording a hub id as its base saves without it."""
    import peft.utils.save_and_load as peft_saving

    from ia2.model import adapters, loading

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(peft_saving, "check_file_exists_on_hf_hub", no_hub)
    model = adapters.fresh(loading.load(str(llama_dir))[0], "lora", 0)
    adapters.save(model, tmp_path / "adapter", "someone/some-model", {"README.md": "card"})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "someone/some-model"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_of_processes_taking_over_one_stale_lock_at_once_only_one_gets_it(tmp_path):
    """Four processes that all find the same stale lock and take it over together, each pausing between judging it
    stale and acting on that (as a busy machine may): exactly one holds it, the others are refused naming a live
    holder."""
    path = lock.inside(tmp_path / "out")
    hold(path, dead_pid())
    go = tmp_path / "go"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom ia2.run import lock\nfrom ia2.errors import IA2Error\n"
        "judged = lock._stale\nlock._stale = lambda holder: (judged(holder), time.sleep(0.2))[0]\n"
        "while not Path(sys.argv[2]).exists():\n    time.sleep(0.001)\n"
        "try:\n    with lock._lock(Path(sys.argv[1])):\n        print('held', flush=True)\n        time.sleep(1)\n"
        "except IA2Error as exc:\n    print('refused' if 'in use by' in str(exc) else str(exc))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(path), str(go)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(1.5)
    go.touch()
    said = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert said == ["held", "refused", "refused", "refused"], said
    assert not path.exists()


def test_a_corrupt_spec_json_of_a_finished_sweep_run_is_set_aside_and_rewritten(
    llama_dir, toy_jsonl, tmp_path, capsys, caplog
):
    """A sweep run's spec.json that no longer parses is named in a warning, renamed spec.json.corrupt and written
    again, so the report reads the run."""
    from test_errors import run_cli

    plan = two_rates(tmp_path / "sweep.yaml", llama_dir, toy_jsonl)
    assert run_cli(["sweep", str(plan)], capsys)[0] == 0
    spec = sorted((tmp_path / "out").glob("runs/**/spec.json"))[0]
    whole = json.loads(spec.read_text())
    spec.write_text('{"config": ')
    with caplog.at_level(logging.WARNING, logger="ia2.run.outdir"):
        assert run_cli(["sweep", str(plan)], capsys)[0] == 0
    warned = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert warned == [f"{spec}: corrupt, set aside as spec.json.corrupt and recomputed"]
    assert json.loads(spec.read_text()) == whole and spec.with_name("spec.json.corrupt").read_text() == '{"config": '
