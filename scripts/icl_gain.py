"""Measure how much a model gains from demonstrations on BIG-bench tasks: zero-shot vs k-shot accuracy and ECE.

Used to choose the demo task. Usage: .venv/bin/python scripts/icl_gain.py MODEL TASK[,TASK...] [--n-test 40] [--k 8]
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from ia2 import models
from ia2.evaluate import score, summarise
from ia2.prompts import Encoder, draw_demos
from ia2.tasks import load_task


def gain(model, tokenizer, task_name: str, n_test: int, k: int) -> dict:
    """Zero-shot and k-shot label metrics on n_test examples; the k demos per query come from a pool of k examples."""
    task = load_task(f"bigbench:{task_name}")
    encoder = Encoder(task, tokenizer, model.config.get_text_config().max_position_embeddings)
    order = list(range(len(task.examples)))
    random.Random(0).shuffle(order)
    test, pool = order[:n_test], order[n_test : n_test + k]
    gold = np.array([encoder.encode(task.examples[i]).label for i in test])
    rng, out = random.Random(1), {}
    for shots in (0, k):
        prompts = [
            encoder.encode(task.examples[i], [task.examples[j] for j in draw_demos(pool, shots, rng)]).prompt
            for i in test
        ]
        metrics = summarise(
            score(model, prompts, encoder.label_ids, tokenizer.pad_token_id),
            gold,
            [ids[0] for ids in encoder.label_ids],
        )
        out[shots] = (metrics["accuracy"], metrics["ece"], float(np.mean([len(p) for p in prompts])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("tasks")
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--k", type=int, default=8)
    args = p.parse_args()
    print("| model | task | 0-shot acc / ECE | k-shot acc / ECE | k-shot prompt tokens |")
    print("|---|---|---|---|---|")
    model, tokenizer = models.load(args.model)
    for task in args.tasks.split(","):
        res = gain(model, tokenizer, task, args.n_test, args.k)
        (a0, e0, _), (ak, ek, lk) = res[0], res[args.k]
        print(f"| {args.model} | {task} | {a0:.3f} / {e0:.3f} | {ak:.3f} / {ek:.3f} | {lk:.0f} |", flush=True)


if __name__ == "__main__":
    main()
