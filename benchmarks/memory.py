"""Host memory of sharded teacher targets: write N examples' activations as a shard store, then read them back batch
by batch exactly as training does (`ia2.training.loop.teacher_acts`), and report each phase's peak resident memory.

    python benchmarks/memory.py --n 100,1000            # Qwen3-4B's target shape: 36 layers x T=200 x 2560, bf16

Each N runs in a fresh process, so its peak RSS (mmap'd shard pages included) is its own. What matters is that the
peaks do not grow with N: the whole store of N=1000 is ~37 GB, far more than the host holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import torch

from ia2.teacher import store
from ia2.training.loop import Item, teacher_acts

GIB = 1 << 30


def peak_rss_gib() -> float:
    """This process's resident-memory high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def entries(n: int, shape: tuple[int, int, int], dtype: torch.dtype):
    """Synthetic collected rows: T answer tokens and one [L, T, H] activation tensor each, made one at a time like a
    collector's (the values do not matter to the sizes)."""
    for i in range(n):
        yield i, [1] * shape[1], {"acts": torch.full(shape, float(i % 7), dtype=dtype)}


def measure(folder: Path, n: int, shape: tuple[int, int, int], batch: int, dtype: torch.dtype) -> dict:
    """Write the store, then one shuffled epoch of training-batch reads; peaks and times of each phase."""
    start = time.perf_counter()
    store.write(folder, entries(n, shape, dtype), n, {"dtype": str(dtype)})
    written, write_peak = time.perf_counter() - start, peak_rss_gib()
    stored = store.TargetStore(folder)
    items = [Item([0], tokens, acts) for tokens, acts in zip(stored.tokens, stored.refs("acts"))]
    order = list(range(n))
    random.Random(0).shuffle(order)
    host = SimpleNamespace(device=torch.device("cpu"))  # teacher_acts only asks the model for its device
    start, total = time.perf_counter(), 0.0
    for i in range(0, n, batch):
        chunk = [items[j] for j in order[i : i + batch]]
        total += float(teacher_acts(host, None, chunk, shape[1], 0)[:, :, -1, 0].sum())
    read = time.perf_counter() - start
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {
        "n": n,
        "store_gib": size / GIB,
        "per_example_mib": size / n / (1 << 20),
        "write_s": written,
        "write_peak_rss_gib": write_peak,
        "read_s": read,
        "read_examples_per_s": n / read,
        "peak_rss_gib": peak_rss_gib(),
        "shards": len(stored.index["shards"]),
        "max_open": stored.max_open,
        "peak_open": stored.peak_open,
        "checksum": total,
    }


def child(args: argparse.Namespace, n: int) -> dict:
    """`measure` in a fresh process (its own peak RSS); the store is deleted afterwards."""
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--layers",
            str(args.layers),
            "--t",
            str(args.t),
            "--hidden",
            str(args.hidden),
            "--batch",
            str(args.batch),
            "--dtype",
            args.dtype,
            "--dir",
            str(root),
        ]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(args: argparse.Namespace, rows: list[dict]) -> str:
    """The markdown table, with the setting and command."""
    lines = [
        f"# Host memory of sharded teacher targets ({datetime.now(UTC).isoformat(timespec='seconds')})",
        "",
        f"Targets [{args.layers} layers, T={args.t}, hidden {args.hidden}] in {args.dtype}, shards of "
        f"{store.SHARD_SIZE} examples or {store.SHARD_BYTES >> 20} MiB, read in shuffled batches of {args.batch} "
        f"by `ia2.training.loop.teacher_acts`; torch {torch.__version__}, {os.cpu_count()} CPUs.",
        f"Command: `python benchmarks/memory.py {' '.join(sys.argv[1:])}`",
        "",
        "| N | store | per example | write | peak RSS writing | read (epoch) | peak RSS (write + read) "
        "| shards (open at most) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['store_gib']:.1f} GiB | {r['per_example_mib']:.1f} MiB | {r['write_s']:.0f} s "
            f"| {r['write_peak_rss_gib']:.2f} GiB | {r['read_s']:.0f} s ({r['read_examples_per_s']:.0f} ex/s) "
            f"| {r['peak_rss_gib']:.2f} GiB | {r['shards']} ({r['peak_open']}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,1000", help="comma-separated example counts")
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--t", type=int, default=200, help="answer tokens per example")
    parser.add_argument("--hidden", type=int, default=2560)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the stores are written (and deleted)")
    parser.add_argument("--out", default="benchmarks/results/memory-qwen3-4b-targets")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.layers, args.t, args.hidden)
    if args.one is not None:
        print(json.dumps(measure(Path(args.dir) / "store", args.one, shape, args.batch, getattr(torch, args.dtype))))
        return
    rows = [child(args, int(n)) for n in args.n.split(",")]
    text = report(args, rows)
    Path(args.out + ".json").write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
