"""Behaviour test on a tiny model that genuinely learns in context (`ia2.model.synthetic`, the synthetic ICL world).

(a) In-context learning must beat zero-shot on a held-out mapping, and (b) IA2 must carry that gain into adapter
weights: a student without demonstrations, trained only to match the ICL teacher's activations on a few training
queries, must label unseen query words like the teacher does, with activations closer to the teacher's than the
untrained model's. Everything after pre-training goes through the library's own pieces.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ia2.config import TrainConfig
from ia2.data.prompts import draw_demos
from ia2.evaluation.scoring import layer_cosine, score, summarise
from ia2.model import adapters
from ia2.model.synthetic import PretrainConfig, World, load, pretrain, save
from ia2.model.taps import Tap
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training.loop import Item, train_stage
from ia2.training.methods import IA2

WORLD_SEED = 0
K = 8  # demonstrations per ICL prompt
PER_CLASS = {"train": 6, "dev": 3, "test": 11}  # words of each held-out cluster; disjoint splits
CHANCE_MARGIN = 0.3  # what "clearly better than zero-shot" means for accuracies over 3 classes (chance 1/3)
CLOSE_TO_ICL = 0.2  # how far below the ICL teacher the IA2 student may fall
CLOSER = 0.1  # how much closer (cosine, per layer) to the teacher's activations the student must be than the base
# IA2 on this tiny model has long loss plateaus (the paper's patience of 5 dev checks stops on the first one, and even
# 50 stopped some seeds early), so it trains all 200 epochs (1,000 steps) and keeps the best dev state. The two layers'
# scales differ a lot, so the per-layer-normalised loss keeps layer 0 from being ignored.
IA2_TRAIN = TrainConfig(per_layer_norm=True, max_epochs=200, patience=10**6)


@pytest.fixture(scope="session")
def world() -> World:
    return World(WORLD_SEED)


@pytest.fixture(scope="session")
def pretrained(world, tmp_path_factory):
    """Pre-train the tiny Llama once per session (seeded, at most 2 threads); keep it in a temporary folder.
    Returns the folder and the pre-training probe log."""
    path = tmp_path_factory.mktemp("synthetic_icl") / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        with torch.random.fork_rng():
            model, log = pretrain(world, seed=WORLD_SEED)
    finally:
        torch.set_num_threads(threads)
    save(model, path)
    return path, log


def test_pretraining_never_shows_the_held_out_mapping(world):
    rng = random.Random(0)
    held = set(zip(world.held_out.clusters, world.held_out.labels))
    for _ in range(2000):
        mapping = world.random_mapping(rng)
        assert len(held & set(zip(mapping.clusters, mapping.labels))) < 2


def held_out_run(
    world: World, base, train_cfg: TrainConfig = IA2_TRAIN, adapter_cfg: str | dict = "lora", seed: int = 0
) -> dict:
    """Zero-shot, ICL and IA2 on the world's held-out mapping, through the library's own pieces."""
    tokenizer = world.tokenizer()
    pad_id = tokenizer.pad_token_id

    # The held-out task: each cluster's words split into training, dev and test queries, never shared.
    mapping, rng = world.held_out, random.Random(f"split-{seed}")
    split: dict[str, list[tuple[int, int]]] = {name: [] for name in PER_CLASS}
    for c, cluster in enumerate(mapping.clusters):
        words, start = rng.sample(world.cluster_words[cluster], sum(PER_CLASS.values())), 0
        for name, n in PER_CLASS.items():
            split[name] += [(w, c) for w in words[start : start + n]]
            start += n
    label_ids = [[world.label_ids[label]] for label in mapping.labels]
    pair = lambda ex: (ex[0], label_ids[ex[1]][0])  # noqa: E731  (word, label token)
    train, dev, test = split["train"], split["dev"], split["test"]
    gold = np.array([c for _, c in test])

    # Prompts as token ids: `<bos> x1 y1 … xk yk xq`; demonstrations only ever come from the training queries.
    demo_rng = random.Random(f"demos-{seed}")
    pool = list(range(len(train)))
    teacher_prompts = [
        world.prompt([pair(train[d]) for d in draw_demos(pool, K, demo_rng, exclude=i)], train[i][0]) for i in pool
    ]
    teacher_prompts += [world.prompt([pair(train[d]) for d in draw_demos(pool, K, demo_rng)], x) for x, _ in dev]
    icl_test = [world.prompt([pair(train[d]) for d in draw_demos(pool, K, demo_rng)], x) for x, _ in test]
    plain = lambda examples: [world.prompt([], x) for x, _ in examples]  # noqa: E731

    tap = Tap(base, "attn")
    model = adapters.fresh(base, adapter_cfg, seed)
    with model.disable_adapter():
        teacher = targets.collect(model, tap, tokenizer, teacher_prompts, CollectSettings(max_new_tokens=1))
        icl = score(model, icl_test, label_ids, pad_id, tap)
        zero = score(model, plain(test), label_ids, pad_id, tap)

    n = len(train)
    items = [Item(p, tok, act) for p, tok, act in zip(plain(train + dev), teacher.tokens, teacher.acts)]
    log = train_stage(model, tap, items[:n], items[n:], IA2, train_cfg, seed, pad_id)
    student = score(model, plain(test), label_ids, pad_id, tap)

    first = [ids[0] for ids in label_ids]
    return {
        "teacher_correct": float(
            np.mean([tok == [label_ids[c][0]] for tok, (_, c) in zip(teacher.tokens, train + dev)])
        ),
        "accuracy": {
            name: summarise(s, gold, first)["accuracy"] for name, s in (("zero", zero), ("icl", icl), ("ia2", student))
        },
        "cosine": {"zero": layer_cosine(zero.acts, icl.acts), "ia2": layer_cosine(student.acts, icl.acts)},
        "log": log,
    }


def test_icl_beats_zero_shot_and_ia2_carries_it_into_the_weights(world, pretrained):
    path, pretrain_log = pretrained
    assert pretrain_log[-1]["probe"] >= PretrainConfig().target, f"pre-training never learned ICL: {pretrain_log}"
    with torch.random.fork_rng():
        run = held_out_run(world, load(path))
    acc, cos, log = run["accuracy"], run["cosine"], run["log"]
    print(
        f"pre-training {pretrain_log[-1]}; accuracy {acc}; cosine to ICL {cos}; "
        f"teacher correct {run['teacher_correct']}; IA2 steps {log['steps']}"
    )

    assert log["best_dev_loss"] < log["history"][0]["dev_loss"]
    # (a) the model learns the held-out mapping from demonstrations, and could not without them.
    assert acc["icl"] >= acc["zero"] + CHANCE_MARGIN
    # (b) IA2 alone, with no demonstrations at test time and no gold labels, carries that gain into the adapter
    # and generalises to query words it was never trained on.
    assert acc["ia2"] >= acc["zero"] + CHANCE_MARGIN
    assert acc["ia2"] >= acc["icl"] - CLOSE_TO_ICL
    # ... by moving the activations towards the teacher's, in every tapped layer.
    assert all(s >= z + CLOSER for s, z in zip(cos["ia2"], cos["zero"]))
