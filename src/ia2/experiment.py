"""One comparison run: a task split per seed, teacher targets, every method trained and evaluated, rows written."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from peft import set_peft_model_state_dict
from tqdm.auto import tqdm

from . import adapters, models, targets
from .adapters import AdapterConfig
from .errors import IA2Error
from .evaluate import Scores, layer_cosine, score, summarise
from .manifest import manifest
from .methods import BASELINES, METHODS, Stage, check_methods
from .paths import write_json
from .prompts import Encoder, Prompted, draw_demos
from .report import write_reports
from .taps import Tap
from .tasks import Task, load_task
from .train import Item, TrainConfig, adapter_state, train_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; it is written next to the results."""

    model: str
    task: str
    methods: tuple[str, ...]
    n: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    labels: tuple[str, ...] | None = None
    k_max: int = 8
    n_test: int = 100
    n_dev: int | None = None
    data_seed: int = 1234
    site: str = "attn"
    train: TrainConfig = field(default_factory=TrainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    batch_size: int = 8
    save_adapters: bool = True

    def validate(self) -> None:
        """Reject settings that cannot run, with the option's name."""
        check_methods(self.methods)
        minimums = {"--n": (self.n, 2), "--n-dev": (self.dev_size, 1), "--n-test": (self.n_test, 1),
                    "--k-max": (self.k_max, 1), "--seeds (count)": (len(self.seeds), 1), "--lora-r": (self.adapter.r, 1)}
        for option, (value, least) in minimums.items():
            if value < least:
                raise IA2Error(f"{option} must be at least {least}, got {value}")
        self.train.validate()

    @property
    def dev_size(self) -> int:
        return self.n_dev if self.n_dev is not None else max(1, self.n // 2)

    def key(self) -> str:
        """Hash of the config minus methods and seeds: a (seed, method) row written under one key is reused by a rerun."""
        payload = {k: v for k, v in asdict(self).items() if k not in ("methods", "seeds")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Split:
    """Indices into the task's examples for one seed; the test set is the same for every seed."""

    train: list[int]
    dev: list[int]
    test: list[int]


def test_and_pool(task: Task, cfg: RunConfig) -> tuple[list[int], list[int]]:
    """The held-out test indices (the file's `split: test` rows if any, else a seeded draw) and the training pool."""
    marked = [i for i, e in enumerate(task.examples) if e.split == "test"]
    if marked:
        pool = [i for i, e in enumerate(task.examples) if e.split != "test"]
        test = marked[: cfg.n_test]
    else:
        order = list(range(len(task.examples)))
        random.Random(cfg.data_seed).shuffle(order)
        test, pool = order[: cfg.n_test], order[cfg.n_test:]
    need = cfg.n + cfg.dev_size
    if len(pool) < need or len(test) < cfg.n_test:
        raise IA2Error(
            f"{task.name}: {len(task.examples)} examples, but N={cfg.n} + dev={cfg.dev_size} + test={cfg.n_test} "
            f"need {need + cfg.n_test}"
        )
    return test, pool


def draw_split(test: list[int], pool: list[int], cfg: RunConfig, seed: int) -> Split:
    """N training and N/2 dev examples drawn from the pool by `seed`."""
    chosen = random.Random(f"split-{seed}").sample(pool, cfg.n + cfg.dev_size)
    return Split(chosen[: cfg.n], chosen[cfg.n:], test)


class Experiment:
    """Holds the model, task and encoder for one run and produces its result rows."""

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        cfg.validate()
        self.cfg, self.out = cfg, out
        self.task = load_task(cfg.task, cfg.labels)
        self.test, self.pool = test_and_pool(self.task, cfg)
        self.model, self.tokenizer = models.load(cfg.model)
        self.pad_id = self.tokenizer.pad_token_id
        self.encoder = Encoder(self.task, self.tokenizer, self.model.config.get_text_config().max_position_embeddings)
        self.fingerprint = targets.model_fingerprint(self.model)
        self.model_class = type(self.model).__name__
        self.tap = Tap(self.model, cfg.site)
        self._zero_shot: Scores | None = None
        self._trained: dict[tuple[Stage, ...], tuple[dict, list[dict]]] = {}

    def encode(self, index: int, demos: list[int] = ()) -> Prompted:
        ex = self.task.examples
        return self.encoder.encode(ex[index], [ex[d] for d in demos])

    def teacher_prompts(self, split: Split, seed: int) -> list[Prompted]:
        """ICL prompts for train (leave-one-out demos) and dev examples (demos from train), k = min(k_max, N−1)."""
        rng, k = random.Random(f"demos-{seed}"), min(self.cfg.k_max, self.cfg.n - 1)
        return [self.encode(i, draw_demos(split.train, k, rng, exclude=i)) for i in split.train + split.dev]

    def eval_scores(self, prompts: list[Prompted], desc: str) -> Scores:
        return score(self.model, [p.prompt for p in prompts], self.encoder.label_ids, self.pad_id, self.tap,
                     self.cfg.batch_size, desc)

    def row(self, method: str, seed: int, scores: Scores, gold: np.ndarray, teacher: Scores | None, demos: int) -> dict:
        cos = layer_cosine(scores.acts, teacher.acts) if teacher is not None else None
        probs = scores.label_probs()
        reliability = {"confidence": probs.max(axis=1).tolist(), "correct": (probs.argmax(axis=1) == gold).astype(int).tolist()}
        return {
            "task": self.task.name, "model": self.cfg.model, "method": method, "n_train": self.cfg.n, "seed": seed,
            **summarise(scores, gold, [ids[0] for ids in self.encoder.label_ids]),
            "asim": float(np.mean(cos)) if cos is not None else None, "asim_layers": cos, "eval_demos": demos,
            "reliability": reliability,
        }

    def run_seed(self, seed: int, methods: list[str]) -> list[dict]:
        """All rows for one seed: baselines on the base model, then each trained method."""
        cfg, split = self.cfg, draw_split(self.test, self.pool, self.cfg, seed)
        plain = [self.encode(i) for i in split.test]
        gold = np.array([p.label for p in plain])
        k_eval, rng = min(cfg.k_max, cfg.n), random.Random(f"icl-eval-{seed}")
        icl_prompts = [self.encode(i, draw_demos(split.train, k_eval, rng)) for i in split.test]
        self.model = adapters.fresh(self.model, cfg.adapter, seed)
        self._trained = {(): (adapter_state(self.model), [])}
        with self.model.disable_adapter():
            icl = self.eval_scores(icl_prompts, f"icl s{seed}")
            if self._zero_shot is None:
                self._zero_shot = self.eval_scores(plain, "zero-shot")
        rows = [self.row("icl", seed, icl, gold, None, k_eval), self.row("zero-shot", seed, self._zero_shot, gold, icl, 0)]
        rows = [r for r in rows if r["method"] in methods]
        trained = [m for m in methods if m not in BASELINES]
        if trained:
            stage_data = self.stage_data(split, seed)
            rows += [self.train_and_eval(m, seed, stage_data, plain, gold, icl) for m in trained]
        return rows

    def stage_data(self, split: Split, seed: int) -> dict:
        """Training and dev items for each label source: gold answers, and the ICL teacher's answers with activations."""
        prompts = self.teacher_prompts(split, seed)
        fields = {"model": self.fingerprint, "task": self.task.name, "data": self.task.data_hash(), "seed": seed,
                  "demos": f"leave-one-out k={min(self.cfg.k_max, self.cfg.n - 1)}"}
        with self.model.disable_adapter():
            teacher = targets.cached_collect(self.model, self.tap, self.tokenizer, [p.prompt for p in prompts], fields,
                                             self.task.max_new_tokens, self.task.separator, self.cfg.batch_size, f"teacher s{seed}")
        plain = [self.encode(i) for i in split.train + split.dev]
        gold = [Item(p.prompt, p.answer) for p in plain]
        icl = [Item(p.prompt, tok, act) for p, tok, act in zip(plain, teacher.tokens, teacher.acts)]
        n = self.cfg.n
        return {"gold": (gold[:n], gold[n:]), "icl": (icl[:n], icl[n:])}

    def train_and_eval(self, method: str, seed: int, data: dict, plain: list[Prompted], gold: np.ndarray, icl: Scores) -> dict:
        """Train a method's stages (reusing a trained prefix such as IA2 before IA2 → SFT), save, evaluate without demos."""
        logs = self.train_stages(METHODS[method], seed, data)
        if self.cfg.save_adapters:
            adapters.save(self.model, self.out / "adapters" / f"seed{seed}" / method)
        scores = self.eval_scores(plain, f"{method} s{seed}")
        row = self.row(method, seed, scores, gold, icl, 0)
        log.info("seed %d %-9s accuracy %.3f ece %.3f", seed, method, row["accuracy"], row["ece"])
        return {**row, "train": logs}

    def train_stages(self, stages: tuple[Stage, ...], seed: int, data: dict) -> list[dict]:
        """Train `stages` on the current seed's adapter, starting from the longest already-trained prefix."""
        memo = self._trained
        done = max((p for p in memo if stages[: len(p)] == p), key=len)
        state, logs = memo[done]
        set_peft_model_state_dict(self.model, state)
        for depth in range(len(done), len(stages)):
            stage = stages[depth]
            train, dev = data[stage.labels]
            logs = logs + [train_stage(self.model, self.tap, train, dev, stage, self.cfg.train, seed * 1000 + depth,
                                       self.pad_id, f"{stage.loss}:{stage.labels} s{seed}")]
            memo[stages[: depth + 1]] = (adapter_state(self.model), logs)
        return logs


def run(cfg: RunConfig, out: Path) -> dict:
    """Run every seed and method, resuming from rows already written under the same config; write the reports."""
    exp = Experiment(cfg, out)
    rows_dir = out / "rows" / cfg.key()
    rows = []
    for seed in tqdm(cfg.seeds, desc="seeds"):
        paths = {m: rows_dir / f"seed{seed}" / f"{m}.json" for m in cfg.methods}
        todo = [m for m, path in paths.items() if not path.exists()]
        if todo:
            for row in exp.run_seed(seed, todo):
                write_json(paths[row["method"]], row)
        rows += [json.loads(paths[m].read_text()) for m in cfg.methods]
    config = {**asdict(cfg), "resolved_model": models.resolve(cfg.model), "key": cfg.key()}
    labels = [exp.task.labels.index(exp.task.examples[i].answer) for i in exp.test]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    result = {"config": config, "majority_accuracy": majority,
              "rows": [{k: v for k, v in r.items() if k != "train"} for r in rows]}
    write_json(out / "manifest.json", manifest(cfg, exp))
    write_json(out / "train_logs.json", [{"seed": r["seed"], "method": r["method"], "stages": r["train"]} for r in rows if "train" in r])
    write_reports(result, out)
    return result
