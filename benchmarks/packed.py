"""A sweep cell side by side: its adapters trained packed, one at a time by ia2, and by the reference loop.

    python benchmarks/packed.py --device cuda --model qwen3-4b-shape           # 15 adapters: 3 lrs × 5 seeds
    OMP_NUM_THREADS=1 python benchmarks/packed.py --device cpu --model tiny

Each side trains IA2 adapters for `--steps` optimizer steps each, with dev passes at the paper's cadence (every 2
steps, dev = N/2), on the same model, data and teacher targets: the reference loop one adapter at a time at batch 1
with 4-step accumulation, ia2 one adapter at a time at batch 4, and ia2 with the cell's adapters packed (`--pack`,
default the whole cell). Reported per side: adapter-steps per second, the speed-up over the reference per
adapter-step, the fraction of the bf16 compute floor (on CUDA) and peak device memory. `--compile on|cudagraphs`
compiles the model's layers for the ia2 sides (the reference loop runs them too, as it would any model); `--profile`
adds a torch.profiler table of one T=1 teacher collection (where its time goes). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from torch.profiler import ProfilerActivity, profile

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
    """One side's measurement: `adapters` adapters trained `steps` optimizer steps each in `seconds`."""

    side: str
    adapters: int
    steps: int
    seconds: float
    flops: float
    device_peak: int | None
    adapter_steps_per_s: float = 0.0
    speedup: float = 0.0
    floor_fraction: float | None = None


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
    token at each check (every `eval_every` steps, and the first)."""
    row = sum(len(i.prompt) + len(i.answer) - 1 for i in train) / len(train)
    dev_tokens = sum(len(i.prompt) + len(i.answer) - 1 for i in dev)
    checks = 1 + -(-steps // eval_every)
    return 6 * params * row * batch * steps + 2 * params * dev_tokens * checks


def measure(args: argparse.Namespace) -> tuple[dict, list[Side], str]:
    """Build the model and data, collect the teacher's targets, then time the three sides."""
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok = speed.build(args.model, args.device, dtype)
    compiled.apply(model, args.compile)
    data = speed.make_data(tok, model.config.max_position_embeddings, args.n, args.dev, args.demos, args.words, 0)
    tap = Tap(model)
    teacher = targets.collect(model, tap, tok, data.icl, CollectSettings(1, "", args.collect_batch))
    items = [Item(p, t, a) for p, t, a in zip(data.plain, teacher.tokens, teacher.acts)]
    train, dev = items[: data.n], items[data.n :]
    student, lanes = cell(model, train, dev, args)
    params, pad = speed.matmul_params(student), tok.pad_token_id
    flops = training_flops(params, train, dev, args.steps, args.train_batch, 2)
    ref_train, ref_dev = speed.reference_examples(train), speed.reference_examples(dev)
    loop = reference_loop.LoopConfig(lr=args.lrs[0], patience=None, limit=args.steps * 4, max_epochs=10**6)

    def reference(limit: int = loop.limit) -> int:
        set_peft_model_state_dict(student, dict(lanes[0].state))
        return reference_loop.train(student, ref_train, ref_dev, "ia2", replace(loop, limit=limit)).steps

    def alone(lanes: Sequence[Lane]) -> int:
        return sum(log["steps"] for lane in lanes for log, _ in train_lanes(student, tap, [lane], IA2, pad))

    def packed(lanes: Sequence[Lane]) -> int:
        size, done = args.pack or len(lanes), []
        for start in range(0, len(lanes), size):
            done += train_lanes(student, tap, lanes[start : start + size], IA2, pad)
        return sum(log["steps"] for log, _ in done)

    warm = [replace(lane, cfg=replace(lane.cfg, max_steps=2)) for lane in lanes]
    reference(4), alone(warm[:1]), packed(warm)  # first calls (and compiles) of every path, untimed
    sides = []
    for name, fn, count in (
        ("reference loop (batch 1 × 4 accumulated)", reference, 1),
        ("ia2, one adapter at a time (batch 4)", lambda: alone(lanes[: args.alone]), args.alone),
        (f"ia2 packed ({len(lanes)} adapters, batch 4 each)", lambda: packed(lanes), len(lanes)),
    ):
        steps, seconds, peak = speed.timed(fn, args.device)
        sides.append(Side(name, count, steps // count, seconds, flops * count, peak))
    ref_rate = sides[0].adapters * sides[0].steps / sides[0].seconds
    peak_flops = args.peak_tflops * 1e12 if args.device.startswith("cuda") else None
    for side in sides:
        side.adapter_steps_per_s = side.adapters * side.steps / side.seconds
        side.speedup = side.adapter_steps_per_s / ref_rate
        side.floor_fraction = side.flops / peak_flops / side.seconds if peak_flops else None
    profiled = t1_profile(student, tap, tok, data.icl, args) if args.profile else ""
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/packed.py", *sys.argv[1:]]),
        "device": args.device,
        "device_name": speed.device_name(args.device),
        "model": {"name": args.model, **speed.model_shape(student)},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "plain_prompt_tokens": round(sum(len(i.prompt) for i in items) / len(items), 1),
    }
    return info, sides, profiled


def t1_profile(model: PeftModel, tap: Tap, tok, prompts: list[list[int]], args: argparse.Namespace) -> str:
    """torch.profiler's table of one T=1 teacher collection over every prompt, sorted by device (or CPU) time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof, model.disable_adapter():
        targets.collect(model, tap, tok, prompts, CollectSettings(1, "", args.collect_batch))
        speed.sync(args.device)
    key = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


def markdown(info: dict, sides: list[Side], profiled: str) -> str:
    """The report: settings, then one line per side."""
    lines = [
        f"# Packed training: {info['model']['name']} on {info['device_name']} ({info['date']})",
        "",
        f"`{info['command']}`",
        "",
        f"Settings: {info['settings']}",
        "",
        "| side | adapters | steps each | s | adapter-steps/s | × reference | of bf16 floor | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in sides:
        lines.append(
            f"| {s.side} | {s.adapters} | {s.steps} | {s.seconds:.2f} | {s.adapter_steps_per_s:.2f} | "
            f"{s.speedup:.1f}× | {speed.percent(s.floor_fraction)} | {speed.gib(s.device_peak)} |"
        )
    if profiled:
        lines += ["", "## T=1 teacher collection, profiled", "", "```", profiled, "```"]
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
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per adapter")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--collect-batch", type=int, default=32)
    p.add_argument("--alone", type=int, default=2, help="adapters timed one at a time (the rate is per adapter-step)")
    p.add_argument("--pack", type=int, default=None, help="most adapters per pack (default: the whole cell)")
    p.add_argument("--compile", choices=compiled.MODES, default="off", help="ia2's --compile, for both ia2 sides")
    p.add_argument("--profile", action="store_true", help="profile one T=1 teacher collection")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--out", type=Path, default=None, help="report path without suffix")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    info, sides, profiled = measure(args)
    out = args.out or Path(__file__).parent / "results" / f"{args.device.split(':')[0]}-{args.model}-packed"
    write_json(out.with_suffix(".json"), {**info, "sides": [asdict(s) for s in sides], "t1_profile": profiled})
    text = markdown(info, sides, profiled)
    write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
