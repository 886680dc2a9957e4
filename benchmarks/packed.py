"""A sweep cell side by side: its adapters trained packed, one at a time by ia2, and by the reference loop.

    python benchmarks/packed.py --device cuda --model qwen3-4b-shape           # 15 adapters: 3 lrs × 5 seeds
    OMP_NUM_THREADS=1 python benchmarks/packed.py --device cpu --model tiny
    OMP_NUM_THREADS=1 python benchmarks/packed.py --device cpu --model qwen3-4b-layout --baseline 4c977a0

Each side trains IA2 adapters for `--steps` optimizer steps each, with dev passes at the paper's cadence (every 2
steps, dev = N/2), on the same model, data and teacher targets: the reference loop one adapter at a time at batch 1
with 4-step accumulation, ia2 one adapter at a time at batch 4, and ia2 with the cell's adapters packed (`--pack`,
default the whole cell). Each ia2 side is timed twice, for `--setup-steps` and for `--steps` steps: the difference is
its steady state (steps and dev passes), the rest its set-up (adding the pack's adapters, the first dev pass, removing
them). Reported per side: set-up seconds, milliseconds per optimizer step (a packed step trains every adapter of the
pack), steady adapter-steps per second, the speed-up over the reference per adapter-step, the fraction of the bf16
compute floor (on CUDA) and peak device memory. `--compile on|cudagraphs` compiles the model's layers for the ia2
sides; `--profile` adds a torch.profiler table of a T=1 teacher collection at `--profile-batch` over
`--profile-prompts` prompts, after a warm-up at that shape; `--baseline COMMIT` first runs the same measurement on
that commit's ia2 (or an ia2 `src` folder) in a subprocess and reports both. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel, set_peft_model_state_dict
from torch.profiler import ProfilerActivity, profile

import ia2
import reference_loop
import speed
from ia2.config import TrainConfig
from ia2.model import adapters, compiled
from ia2.model.taps import Tap
from ia2.paths import write_json, write_text
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training.loop import Item, Lane, adapter_state, train_lanes
from ia2.training.methods import IA2


@dataclass
class Side:
    """One side's measurement: `adapters` adapters trained `steps` optimizer steps each; `seconds` in the steady
    state (set-up excluded), `setup_s` of set-up, `step_ms` per optimizer step of the side."""

    side: str
    adapters: int
    steps: int
    seconds: float
    setup_s: float
    step_ms: float
    flops: float
    device_peak: int | None
    adapter_steps_per_s: float = 0.0
    speedup: float = 0.0
    floor_fraction: float | None = None


def collect(model: PeftModel, tap: Tap, tok, prompts: list[list[int]], batch: int) -> targets.Targets:
    """The teacher's T=1 targets, EOS as the only stop, through either form of `targets.collect` (settings as one
    object since ia2 0.3; as parameters before), so `--baseline` can measure an earlier commit."""
    if "settings" in inspect.signature(targets.collect).parameters:
        return targets.collect(model, tap, tok, prompts, CollectSettings(1, "", batch))
    return targets.collect(model, tap, tok, prompts, 1, "", batch)


def cell(
    model: torch.nn.Module, train: list[Item], dev: list[Item], args: argparse.Namespace
) -> tuple[PeftModel, list[Lane]]:
    """The model with a LoRA adapter, and the cell's adapters: each learning rate × seed, a fresh LoRA (r8, α8 on q,
    k, o) from its seed, IA2 for `--steps` steps with dev checks every 2."""
    states = []
    for seed in range(args.seeds):
        model = adapters.fresh(model, "lora", seed)
        states.append(adapter_state(model))
    lanes = [
        Lane(
            train,
            dev,
            TrainConfig(lr=lr, train_batch_size=args.train_batch, max_steps=args.steps, patience=10**6),
            seed,
            states[seed],
            f"lr {lr:g} seed {seed}",
        )
        for lr in args.lrs
        for seed in range(args.seeds)
    ]
    return model, lanes


def training_flops(params: int, train: list[Item], dev: list[Item], steps: int, batch: int, eval_every: int) -> float:
    """One adapter's compute floor for `steps` steps: 6·P per training token (mean row length × rows) and 2·P per dev
    token at each check (every `eval_every` steps)."""
    row = sum(len(i.prompt) + len(i.answer) - 1 for i in train) / len(train)
    dev_tokens = sum(len(i.prompt) + len(i.answer) - 1 for i in dev)
    return 6 * params * row * batch * steps + 2 * params * dev_tokens * -(-steps // eval_every)


def with_steps(lanes: Sequence[Lane], steps: int) -> list[Lane]:
    """The lanes, each limited to `steps` optimizer steps."""
    return [replace(lane, cfg=replace(lane.cfg, max_steps=steps)) for lane in lanes]


def split_timing(
    run: Callable[[int], int], short: int, steps: int, device: str
) -> tuple[float, float, int | None, int]:
    """(steady seconds for `steps` steps, set-up seconds, peak memory, optimizer steps per run): `run(k)` trains
    every adapter of the side for k steps and returns how many optimizer steps of the side that took; the set-up is
    what a run costs beyond its steps (the difference of a `short` and a `steps` run gives the cost per step)."""
    calls, brief, _ = speed.timed(lambda: run(short), device)
    calls_full, full, peak = speed.timed(lambda: run(steps), device)
    per_step = (full - brief) / (calls_full - calls)
    if per_step <= 0:  # other work on the machine swamped the difference: the whole run, set-up counted as steps
        per_step = full / calls_full
    return per_step * calls_full, max(0.0, full - per_step * calls_full), peak, calls_full


def measure(args: argparse.Namespace) -> tuple[dict, list[Side], dict]:
    """Build the model and data, collect the teacher's targets, then time the three sides."""
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok = speed.build(args.model, args.device, dtype)
    compiled.apply(model, args.compile)
    data = speed.make_data(tok, model.config.max_position_embeddings, args.n, args.dev, args.demos, args.words, 0)
    tap = Tap(model)
    teacher = collect(model, tap, tok, data.icl, args.collect_batch)
    items = [Item(p, t, a) for p, t, a in zip(data.plain, teacher.tokens, teacher.acts)]
    train, dev = items[: data.n], items[data.n :]
    student, lanes = cell(model, train, dev, args)
    params, pad = speed.matmul_params(student), tok.pad_token_id
    flops = training_flops(params, train, dev, args.steps, args.train_batch, 2)
    ref_train, ref_dev = speed.reference_examples(train), speed.reference_examples(dev)
    loop = reference_loop.LoopConfig(lr=args.lrs[0], patience=None, limit=args.steps * 4, max_epochs=10**6)
    size = args.pack or len(lanes)

    def reference(limit: int = loop.limit) -> int:
        set_peft_model_state_dict(student, dict(lanes[0].state))
        return reference_loop.train(student, ref_train, ref_dev, "ia2", replace(loop, limit=limit)).steps

    def alone(steps: int) -> int:
        cut = with_steps(lanes[: args.alone], steps)
        return sum(train_lanes(student, tap, [lane], IA2, pad)[0][0]["steps"] for lane in cut)

    def packed(steps: int) -> int:
        cut = with_steps(lanes, steps)
        packs = [train_lanes(student, tap, cut[i : i + size], IA2, pad) for i in range(0, len(cut), size)]
        return sum(max(log["steps"] for log, _ in pack) for pack in packs)

    reference(4), alone(2), packed(2)  # first calls (and compiles) of every path, untimed
    _, ref_seconds, ref_peak = speed.timed(reference, args.device)
    ref_ms = 1e3 * ref_seconds / args.steps
    sides = [Side("reference loop (batch 1 × 4 accumulated)", 1, args.steps, ref_seconds, 0.0, ref_ms, flops, ref_peak)]
    for name, run, count in (
        ("ia2, one adapter at a time (batch 4)", alone, args.alone),
        (f"ia2 packed ({len(lanes)} adapters, batch 4 each)", packed, len(lanes)),
    ):
        seconds, setup, peak, calls = split_timing(run, args.setup_steps, args.steps, args.device)
        sides.append(Side(name, count, args.steps, seconds, setup, 1e3 * seconds / calls, flops * count, peak))
    ref_rate = args.steps / ref_seconds
    peak_flops = args.peak_tflops * 1e12 if args.device.startswith("cuda") else None
    for side in sides:
        side.adapter_steps_per_s = side.adapters * side.steps / side.seconds
        side.speedup = side.adapter_steps_per_s / ref_rate
        side.floor_fraction = side.flops / peak_flops / side.seconds if peak_flops else None
    profiled = t1_profile(student, tap, tok, args) if args.profile else {}
    return describe(args, student, items), sides, profiled


def t1_profile(model: PeftModel, tap: Tap, tok, args: argparse.Namespace) -> dict:
    """torch.profiler's table of a T=1 teacher collection of `--profile-prompts` ICL prompts at `--profile-batch`,
    sorted by device (or CPU) time, after one untimed collection of a batch at that shape; with its seconds."""
    context = model.config.max_position_embeddings
    data = speed.make_data(tok, context, args.profile_prompts, 0, args.demos, args.words, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with model.disable_adapter():
        collect(model, tap, tok, data.icl[: args.profile_batch], args.profile_batch)
        speed.sync(args.device)
        with profile(activities=activities) as prof:
            _, seconds, _ = speed.timed(lambda: collect(model, tap, tok, data.icl, args.profile_batch), args.device)
    key = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    return {"prompts": len(data.icl), "batch": args.profile_batch, "seconds": seconds, "table": table}


def describe(args: argparse.Namespace, model: PeftModel, items: list[Item]) -> dict:
    """What the numbers were measured on: date, command, device, versions, the ia2 source, model and settings."""
    source = Path(ia2.__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/packed.py", *sys.argv[1:]]),
        "device": args.device,
        "device_name": speed.device_name(args.device),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "ia2_source": str(source),
            "ia2_commit": head.stdout.strip() or None,
        },
        "model": {"name": args.model, **speed.model_shape(model)},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "plain_prompt_tokens": round(sum(len(i.prompt) for i in items) / len(items), 1),
    }


def baseline(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """The same measurement on another ia2: `--baseline`, a commit of this repository (its `src` is exported to a
    temporary folder) or an ia2 `src` folder, run in a subprocess with this script and its benchmarks."""
    folder = Path(tempfile.mkdtemp())
    source = Path(args.baseline)
    if not source.is_dir():
        repo = Path(__file__).resolve().parents[1]
        tree = subprocess.run(
            ["git", "-C", str(repo), "archive", args.baseline, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(folder)], input=tree.stdout, check=True)
        source = folder / "src"
    skip = {i for i, a in enumerate(argv) if a in ("--baseline", "--out")}
    keep = [a for i, a in enumerate(argv) if i not in skip and i - 1 not in skip]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(Path(__file__).parent)])}
    subprocess.run([sys.executable, __file__, *keep, "--out", str(folder / "baseline")], env=env, check=True)
    report = json.loads((folder / "baseline.json").read_text())
    report["info"]["versions"]["ia2_commit"] = report["info"]["versions"]["ia2_commit"] or args.baseline
    return report


def table(sides: Sequence[dict], label: str = "") -> list[str]:
    """One markdown row per side (from its JSON form)."""
    return [
        f"| {label}{s['side']} | {s['adapters']} | {s['steps']} | {s['setup_s']:.2f} | {s['step_ms']:.1f} | "
        f"{s['adapter_steps_per_s']:.2f} | {s['speedup']:.1f}× | {speed.percent(s['floor_fraction'])} | "
        f"{speed.gib(s['device_peak'])} |"
        for s in sides
    ]


def markdown(report: dict) -> str:
    """The report: settings, one line per side (the baseline's first, when measured), and the packed step's cost
    in steps of one adapter alone."""
    info = report["info"]
    lines = [
        f"# Packed training: {info['model']['name']} on {info['device_name']} ({info['date']})",
        "",
        f"`{info['command']}`",
        "",
        f"Versions: {info['versions']}",
        "",
        f"Settings: {info['settings']}",
        "",
        "| side | adapters | steps each | set-up s | ms per step | adapter-steps/s | × reference | of bf16 floor |"
        " peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    before = report.get("baseline")
    if before:
        lines += table(before["sides"], f"before ({before['info']['versions']['ia2_commit']}): ")
    lines += table(report["sides"], "after: " if before else "")
    for name, rep in (("before", before), ("after" if before else "this run", report)):
        if rep:
            alone, packed = rep["sides"][1], rep["sides"][2]
            lines.append(
                f"\n{name}: a packed step costs {packed['step_ms'] / alone['step_ms']:.2f} steps of one adapter"
            )
    profiled = report.get("t1_profile")
    if profiled:
        rate = profiled["prompts"] / profiled["seconds"]
        lines += [
            "",
            f"## T=1 teacher collection, profiled: {profiled['prompts']} prompts at batch {profiled['batch']}",
            "",
            f"{profiled['seconds']:.2f} s ({rate:.1f} prompts/s, under the profiler)",
            "",
            "```",
            profiled["table"],
            "```",
        ]
    return "\n".join(lines) + "\n"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=speed.MODELS, default="tiny")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: bf16 on CUDA, else fp32")
    p.add_argument("--n", type=int, default=16, help="training examples per adapter")
    p.add_argument("--dev", type=int, default=8, help="dev examples (the paper's N/2)")
    p.add_argument("--demos", type=int, default=5, help="demonstrations per teacher prompt")
    p.add_argument("--words", type=int, default=12, help="words per synthetic question")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="the cell's learning rates")
    p.add_argument("--seeds", type=int, default=5, help="the cell's seeds")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per adapter")
    p.add_argument("--setup-steps", type=int, default=2, help="steps of the short run that sets the set-up apart")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--collect-batch", type=int, default=32)
    p.add_argument("--alone", type=int, default=2, help="adapters timed one at a time (the rate is per adapter-step)")
    p.add_argument("--pack", type=int, default=None, help="most adapters per pack (default: the whole cell)")
    p.add_argument("--compile", choices=compiled.MODES, default="off", help="ia2's --compile, for both ia2 sides")
    p.add_argument("--profile", action="store_true", help="profile a T=1 teacher collection")
    p.add_argument("--profile-prompts", type=int, default=256)
    p.add_argument("--profile-batch", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=speed.H100_SXM_BF16_TFLOPS, help="dense bf16 peak")
    p.add_argument("--baseline", default=None, help="an earlier commit (or ia2 src folder) to measure first, alike")
    p.add_argument("--out", type=Path, default=None, help="report path without suffix")
    args = p.parse_args(argv)
    if args.steps <= args.setup_steps:
        p.error("--steps must exceed --setup-steps")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    before = baseline(args, argv) if args.baseline else None
    info, sides, profiled = measure(args)
    report = {"info": info, "sides": [asdict(s) for s in sides], "t1_profile": profiled} | (
        {"baseline": before} if before else {}
    )
    name = f"{speed.device_slug(args.device)}-{args.model}-packed"
    out = args.out or Path(__file__).parent / "results" / (name + ("" if args.compile == "off" else f"-{args.compile}"))
    write_json(out.with_suffix(".json"), report)
    text = markdown(report)
    write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
