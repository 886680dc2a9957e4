"""A pack of adapters against the same adapters trained alone, in the model's dtype (bf16 on CUDA): how far apart
their weights and dev losses end, and whether they stop alike.

    python benchmarks/pack_check.py --device cuda --model qwen3-4b-shape     # bf16, 3 adapters
    OMP_NUM_THREADS=1 python benchmarks/pack_check.py --device cpu --model tiny --dtype bfloat16

Each adapter (a learning rate × seed of a sweep cell, as in packed.py) trains IA2 for `--steps` steps with dev checks
every 2 steps and early stopping on, alone and then packed with the others; prints and writes per adapter the steps,
best step, the largest weight difference and the largest relative dev-loss difference over the checks both made.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

import packed
import speed
from ia2.model.taps import Tap
from ia2.paths import write_json
from ia2.training.loop import Item, train_lanes
from ia2.training.methods import IA2


def compare(alone: tuple[dict, dict], pack: tuple[dict, dict]) -> dict:
    """One adapter's differences, packed against alone: steps and best steps of each, the largest absolute weight
    difference, and the largest relative difference of the dev losses both recorded at the same step."""
    (log_a, state_a), (log_p, state_p) = alone, pack
    weights = max((state_p[k].float() - state_a[k].float()).abs().max().item() for k in state_a)
    dev_a = {h["step"]: h["dev_loss"] for h in log_a["history"]}
    common = [(dev_a[h["step"]], h["dev_loss"]) for h in log_p["history"] if h["step"] in dev_a]
    losses = max(abs(p - a) / max(abs(a), 1e-12) for a, p in common)
    return {
        "steps": [log_a["steps"], log_p["steps"]],
        "best_step": [log_a["best_step"], log_p["best_step"]],
        "max_weight_diff": weights,
        "max_dev_loss_rel_diff": losses,
    }


def check(args: argparse.Namespace) -> dict:
    """Train the adapters alone, then packed, and compare each pair."""
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok = speed.build(args.model, args.device, dtype)
    data = speed.make_data(tok, model.config.max_position_embeddings, args.n, args.dev, 5, 12, 0)
    tap = Tap(model)
    teacher = packed.collect(model, tap, tok, data.icl, 32)
    items = [Item(p, t, a) for p, t, a in zip(data.plain, teacher.tokens, teacher.acts)]
    cell = argparse.Namespace(seeds=args.adapters, lrs=[args.lr], steps=args.steps, train_batch=4)
    student, lanes = packed.cell(model, items[: data.n], items[data.n :], cell)
    lanes = [replace(lane, cfg=replace(lane.cfg, patience=args.patience)) for lane in lanes]
    pad = tok.pad_token_id
    alone = [train_lanes(student, tap, [lane], IA2, pad)[0] for lane in lanes]
    pack = train_lanes(student, tap, lanes, IA2, pad)
    return {
        "device": args.device,
        "device_name": speed.device_name(args.device),
        "dtype": str(dtype).removeprefix("torch."),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "adapters": [compare(a, p) for a, p in zip(alone, pack)],
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=speed.MODELS, default="tiny")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: bf16 on CUDA, else fp32")
    p.add_argument("--adapters", type=int, default=3, help="seeds of the pack, one learning rate")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--dev", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="report path without suffix")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    report = check(args)
    name = f"{speed.device_slug(args.device)}-{args.model}-pack-check-{report['dtype']}"
    out = args.out or Path(__file__).parent / "results" / name
    write_json(out.with_suffix(".json"), report)
    print(f"pack of {args.adapters} against alone, {report['dtype']} on {report['device_name']}:")
    for k, row in enumerate(report["adapters"]):
        print(
            f"  adapter {k}: steps {row['steps'][0]}/{row['steps'][1]} (alone/packed), best step "
            f"{row['best_step'][0]}/{row['best_step'][1]}, weights ≤ {row['max_weight_diff']:.2e}, "
            f"dev losses ≤ {row['max_dev_loss_rel_diff']:.2e} relative"
        )


if __name__ == "__main__":
    main()
