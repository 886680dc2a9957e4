"""One comparison run: a task split per seed, teacher targets, every method trained and evaluated, rows written."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import parse_flag_from_env
from peft import set_peft_model_state_dict
from tqdm.auto import tqdm

from . import adapters, distributed, models, targets
from .adapters import AdapterConfig
from .errors import IA2Error
from .evaluate import Scores, generate_texts, generation_metrics, layer_cosine, score, summarise
from .manifest import manifest
from .methods import BASELINES, METHODS, Stage, check_methods
from .paths import write_json
from .prompts import Encoder, Prompted, draw_demos
from .report import write_reports
from .taps import Tap
from .parsers import PARSERS
from .tasks import Task, check_transfer, load_task
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
    layers: tuple[int, ...] | None = None
    chat: bool = False
    answer_prefix: str | None = None
    teacher_stop: str = "task"
    merge_bf16: bool = False
    eval_tasks: tuple[str, ...] = ()
    icl_demos: str = "shared"
    parser: str | None = None
    max_new_tokens: int | None = None
    unlabelled: int | None = None
    permutations: int = 1
    soft_top_k: int = 0
    teacher: str = "cached"
    target_dtype: str = "float32"
    target_store: str = "file"
    train: TrainConfig = field(default_factory=TrainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    batch_size: int = 8
    save_adapters: bool = True
    device: str = "auto"
    dtype: str = "float32"
    fsdp: bool = False

    def validate(self) -> None:
        """Reject settings that cannot run, with the option's name."""
        check_methods(self.methods)
        minimums = {"--n": (self.n, 2), "--n-dev": (self.dev_size, 1), "--n-test": (self.n_test, 1),
                    "--k-max": (self.k_max, 1), "--seeds (count)": (len(self.seeds), 1),
                    "--soft-top-k": (self.soft_top_k, 0)}
        for option, (value, least) in minimums.items():
            if value < least:
                raise IA2Error(f"{option} must be at least {least}, got {value}")
        if self.unlabelled is not None and self.unlabelled < 1 or self.permutations < 1:
            raise IA2Error(f"--unlabelled and --permutations must be at least 1, got {self.unlabelled}, {self.permutations}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise IA2Error(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.parser is not None and self.parser not in PARSERS:
            raise IA2Error(f"--parser {self.parser!r} is unknown: choose from {', '.join(PARSERS)}")
        if self.icl_demos not in ICL_DEMOS:
            raise IA2Error(f"--icl-demos must be one of {', '.join(ICL_DEMOS)}, got {self.icl_demos!r}")
        if self.dtype not in DTYPES:
            raise IA2Error(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.merge_bf16 and self.adapter.kind not in ("lora", "ia3"):
            raise IA2Error(f"--merge-bf16 needs a LoRA or IA3 adapter, not {self.adapter.kind}")
        if self.teacher_stop not in TEACHER_STOPS:
            raise IA2Error(f"--teacher-stop must be one of {', '.join(TEACHER_STOPS)}, got {self.teacher_stop!r}")
        self.validate_targets()
        self.validate_fsdp()
        self.train.validate()
        self.adapter.validate()

    def validate_targets(self) -> None:
        """Reject unknown teacher-target settings, and storage settings the online teacher (which stores none) ignores."""
        for option, value, allowed in (("--teacher", self.teacher, TEACHERS),
                                       ("--target-dtype", self.target_dtype, TARGET_DTYPES),
                                       ("--target-store", self.target_store, TARGET_STORES)):
            if value not in allowed:
                raise IA2Error(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
        if self.teacher == "online" and (self.target_dtype, self.target_store) != ("float32", "file"):
            raise IA2Error("--target-dtype and --target-store apply to stored activations: drop them with --teacher online")
        if self.teacher == "online" and self.train.per_layer_norm and distributed.world_size() > 1:
            raise IA2Error("--per-layer-norm with several processes needs stored teacher activations: drop --teacher online")

    def validate_fsdp(self) -> None:
        """Reject --fsdp without several processes or with what it cannot shard, and accelerate's own FSDP settings,
        which ia2 does not read (and under which transformers may load the weights on the main process only)."""
        if parse_flag_from_env("ACCELERATE_USE_FSDP"):
            raise IA2Error("accelerate launch --use_fsdp configures accelerate's FSDP, which ia2 does not use: "
                           "launch with --multi_gpu and give ia2 --fsdp")
        if not self.fsdp:
            return
        if distributed.world_size() < 2:
            raise IA2Error("--fsdp shards the model over several processes: start ia2 with torchrun or accelerate "
                           "launch (two processes or more)")
        if self.adapter.kind not in FSDP_ADAPTERS:
            raise IA2Error(f"--fsdp supports {' and '.join(FSDP_ADAPTERS)} adapters, not {self.adapter.kind} (its "
                           "virtual tokens are embedded outside the sharded model)")
        if self.merge_bf16:
            raise IA2Error("--merge-bf16 merges the adapter into a whole copy of the model: drop it with --fsdp")

    @property
    def dev_size(self) -> int:
        return self.n_dev if self.n_dev is not None else max(1, self.n // 2)

    def key(self) -> str:
        """Hash of the settings that differ from their defaults, minus methods, seeds and --fsdp (which, like the
        number of processes, changes how the work is spread, not the results): a (seed, method) row written under
        one key is reused by a rerun, and adding an option with a default keeps earlier keys valid."""
        payload = {k: v for k, v in changed(self).items() if k not in ("methods", "seeds", "fsdp")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


ICL_DEMOS = ("shared", "per-query", "pool")
DTYPES = ("float32", "bfloat16", "float16")
TEACHER_STOPS = ("task", "eos")
TEACHERS = ("cached", "online")
TARGET_DTYPES = ("float32", "bfloat16")
TARGET_STORES = ("file", "shards")
FSDP_ADAPTERS = ("lora", "ia3")


def changed(obj: object) -> dict:
    """The fields of a (nested) dataclass whose values differ from their defaults; required fields always count."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            nested = changed(value)
            if nested:
                out[f.name] = nested
            continue
        default = f.default if f.default is not MISSING else f.default_factory() if f.default_factory is not MISSING else MISSING
        if default is MISSING or value != default:
            out[f.name] = value
    return out


def declared(spec: str, cfg: RunConfig) -> Task:
    """A task as declared, made generative by `--parser` (scored by that answer extractor) and with its answer length
    overridden by `--max-new-tokens`, when given."""
    task = load_task(spec, cfg.labels if spec == cfg.task else None)
    if cfg.parser is not None and not task.generative and cfg.max_new_tokens is None:
        raise IA2Error(f"--parser {cfg.parser} makes {spec} generative: give --max-new-tokens too")
    if cfg.parser is not None:
        task = replace(task, labels=(), parser=cfg.parser)
    if cfg.answer_prefix is not None:
        task = replace(task, answer_prefix=cfg.answer_prefix)
    return task if cfg.max_new_tokens is None else replace(task, max_new_tokens=cfg.max_new_tokens)


@dataclass
class Split:
    """Indices into the task's examples for one seed; the test set is the same for every seed."""

    train: list[int]
    dev: list[int]
    test: list[int]
    unlabelled: list[int] = field(default_factory=list)


def marked_test(task: Task, n_test: int, data_seed: int) -> tuple[list[int], list[int]]:
    """The held-out test indices (the task's `split: test` rows if any, else a seeded draw) and the rest."""
    marked = [i for i, e in enumerate(task.examples) if e.split == "test"]
    if marked:
        return marked[:n_test], [i for i, e in enumerate(task.examples) if e.split != "test"]
    order = list(range(len(task.examples)))
    random.Random(data_seed).shuffle(order)
    return order[:n_test], order[n_test:]


def test_and_pool(task: Task, cfg: RunConfig) -> tuple[list[int], list[int]]:
    """The held-out test indices and the training pool, checked to be large enough for N + dev + test."""
    test, pool = marked_test(task, cfg.n_test, cfg.data_seed)
    need = cfg.n + cfg.dev_size + (cfg.unlabelled or 0)
    if len(pool) < need or len(test) < cfg.n_test:
        unlabelled = f" + unlabelled={cfg.unlabelled}" if cfg.unlabelled else ""
        raise IA2Error(
            f"{task.name}: {len(task.examples)} examples, but N={cfg.n} + dev={cfg.dev_size}{unlabelled} + "
            f"test={cfg.n_test} need {need + cfg.n_test}"
        )
    return test, pool


def draw_split(test: list[int], pool: list[int], cfg: RunConfig, seed: int) -> Split:
    """N training and N/2 dev examples drawn from the pool by `seed`, and in low-data mode M unlabelled queries from
    the rest (the labelled draw is the same with or without them)."""
    chosen = random.Random(f"split-{seed}").sample(pool, cfg.n + cfg.dev_size)
    rest = sorted(set(pool) - set(chosen))
    unlabelled = random.Random(f"unlabelled-{seed}").sample(rest, cfg.unlabelled) if cfg.unlabelled else []
    return Split(chosen[: cfg.n], chosen[cfg.n:], test, unlabelled)


@dataclass
class EvalSet:
    """A held-out test set every method is scored on: the run's own task, or an out-of-distribution one."""

    task: Task
    encoder: Encoder
    test: list[int]


@dataclass
class SeedEval:
    """One evaluation set's prompts for one seed: test queries alone and with demonstrations, gold labels, ICL scores."""

    eval: EvalSet
    plain: list[Prompted]
    gold: np.ndarray
    icl_prompts: list[Prompted]
    k: int
    icl: torch.Tensor | None = None


def row_file(seed: int, method: str, eval_task: str, own_task: str) -> str:
    """Where a row lives under rows/<key>/: `seed<S>/<method>.json`, with `@<eval task>` for an OOD evaluation."""
    suffix = "" if eval_task == own_task else "@" + eval_task.replace("/", "_").replace(":", "_")
    return f"seed{seed}/{method}{suffix}.json"


class Experiment:
    """Holds the model, task and encoders for one run and produces its result rows."""

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        cfg.validate()
        self.cfg, self.out = cfg, out
        device = distributed.device(cfg.device)
        with distributed.main_first():
            self.task = declared(cfg.task, cfg)
            self.test, self.pool = test_and_pool(self.task, cfg)
            self.model, self.tokenizer = models.load(cfg.model, getattr(torch, cfg.dtype), "cpu" if cfg.fsdp else device)
            self.pad_id = self.tokenizer.pad_token_id
            self.context = self.model.config.get_text_config().max_position_embeddings
            self.encoder = Encoder(self.task, self.tokenizer, self.context, cfg.chat)
            self.evals = [EvalSet(self.task, self.encoder, self.test)] + [self.ood_set(name) for name in cfg.eval_tasks]
        self.fingerprint = targets.model_fingerprint(self.model)
        self.model_class = type(self.model).__name__
        if cfg.fsdp:
            distributed.shard_model(self.model, device)
        self.tap = Tap(self.model, cfg.site, cfg.layers)
        self._zero_shot: dict[str, tuple[dict, torch.Tensor]] = {}
        self._trained: dict[tuple[Stage, ...], tuple[dict, list[dict]]] = {}

    def ood_set(self, name: str) -> EvalSet:
        """An out-of-distribution evaluation set whose labels must be the training task's (or a superset of them)."""
        task = declared(name, self.cfg)
        check_transfer(self.task, task)
        test, _ = marked_test(task, self.cfg.n_test, self.cfg.data_seed)
        return EvalSet(task, Encoder(task, self.tokenizer, self.context, self.cfg.chat), test)

    def encode(self, index: int, demos: list[int] = ()) -> Prompted:
        ex = self.task.examples
        return self.encoder.encode(ex[index], [ex[d] for d in demos])

    def teacher_queries(self, split: Split) -> list[int]:
        """The queries the ICL teacher answers: the N training examples, or the M unlabelled ones in low-data mode,
        then the dev examples."""
        return (split.unlabelled if self.cfg.unlabelled else split.train) + split.dev

    def teacher_prompts(self, split: Split, seed: int) -> tuple[list[Prompted], str]:
        """ICL prompts of the teacher queries and the demo policy's name.

        Normally each training query gets k = min(k_max, N−1) leave-one-out demos (dev queries draw from the training
        set); in low-data mode query j gets permutation j mod K of k = min(k_max, N) labelled examples.
        """
        rng, queries = random.Random(f"demos-{seed}"), self.teacher_queries(split)
        if not self.cfg.unlabelled:
            k = min(self.cfg.k_max, self.cfg.n - 1)
            return [self.encode(i, draw_demos(split.train, k, rng, exclude=i)) for i in queries], f"leave-one-out k={k}"
        k = min(self.cfg.k_max, self.cfg.n)
        orders = [draw_demos(split.train, k, rng) for _ in range(self.cfg.permutations)]
        prompts = [self.encode(i, orders[j % len(orders)]) for j, i in enumerate(queries)]
        return prompts, f"low-data k={k} permutations={self.cfg.permutations}"

    def eval_scores(self, prompts: list[Prompted], label_ids: list[list[int]], desc: str) -> Scores:
        return score(self.model, [p.prompt for p in prompts], label_ids, self.pad_id, self.tap, self.cfg.batch_size, desc)

    def seed_eval(self, ev: EvalSet, split: Split, seed: int) -> SeedEval:
        """Test prompts of one evaluation set for one seed; ICL demonstrations come from the N training examples,
        one draw shared by every query (`shared`) or one per query (`per-query`), or, as in the reference code,
        from the pool outside the training and dev examples, one draw per query (`pool`)."""
        k, rng = min(self.cfg.k_max, self.cfg.n), random.Random(f"icl-eval-{seed}")
        shared = draw_demos(split.train, k, rng)
        outside = sorted(set(self.pool) - set(split.train + split.dev + split.unlabelled))
        source = {"shared": None, "per-query": split.train, "pool": outside}[self.cfg.icl_demos]
        demos = [shared if source is None else draw_demos(source, k, rng) for _ in ev.test]
        source = self.task.examples
        plain = [ev.encoder.encode(ev.task.examples[i]) for i in ev.test]
        icl = [ev.encoder.encode(ev.task.examples[i], [source[d] for d in ds], self.task) for i, ds in zip(ev.test, demos)]
        return SeedEval(ev, plain, np.array([p.label for p in plain]), icl, k)

    def evaluate(self, se: SeedEval, prompts: list[Prompted], desc: str) -> tuple[dict, torch.Tensor]:
        """The current model's metrics on prompts of one evaluation set, and its activations at the last prompt token.

        Classification is scored from the answer distribution; a generative task generates, cuts at the stop rule
        and compares parsed answers (parse failures count as wrong).
        """
        task, encoder = se.eval.task, se.eval.encoder
        if task.generative:
            texts = generate_texts(self.model, self.tokenizer, [p.prompt for p in prompts], task, self.cfg.batch_size, desc)
            golds = [task.examples[i].answer for i in se.eval.test]
            acts = self.eval_scores(prompts, [[self.pad_id]], f"{desc} acts").acts
            return {**generation_metrics(texts, golds, task.parser), "generations": texts, "reliability": None}, acts
        scores = self.eval_scores(prompts, encoder.label_ids, desc)
        probs = scores.label_probs()
        reliability = {"confidence": probs.max(axis=1).tolist(), "correct": (probs.argmax(axis=1) == se.gold).astype(int).tolist()}
        return {**summarise(scores, se.gold, [ids[0] for ids in encoder.label_ids]), "reliability": reliability}, scores.acts

    def row(self, method: str, seed: int, se: SeedEval, measured: dict, acts: torch.Tensor, demos: int) -> dict:
        cos = layer_cosine(acts, se.icl) if method != "icl" else None
        return {
            "task": self.task.name, "eval_task": se.eval.task.name, "model": self.cfg.model, "method": method,
            "n_train": self.cfg.n, "seed": seed, **measured,
            "asim": float(np.mean(cos)) if cos is not None else None, "asim_layers": cos, "eval_demos": demos,
        }

    def baseline_rows(self, seed: int, se: SeedEval) -> list[dict]:
        """ICL (with demonstrations) and zero-shot rows of one evaluation set; zero-shot is scored once per run."""
        name = se.eval.task.name
        with self.model.disable_adapter():
            icl, se.icl = self.evaluate(se, se.icl_prompts, f"icl s{seed}")
            if name not in self._zero_shot:
                self._zero_shot[name] = self.evaluate(se, se.plain, "zero-shot")
        return [self.row("icl", seed, se, icl, se.icl, se.k), self.row("zero-shot", seed, se, *self._zero_shot[name], 0)]

    def run_seed(self, seed: int, methods: list[str]) -> Iterator[list[dict]]:
        """One seed's rows as they are measured, so that each can be written at once: the baselines on the base
        model, then each trained method, on every evaluation set."""
        split = draw_split(self.test, self.pool, self.cfg, seed)
        self.model = adapters.fresh(self.model, self.cfg.adapter, seed)
        self._trained = {(): (adapter_state(self.model), [])}
        evals = [self.seed_eval(ev, split, seed) for ev in self.evals]
        yield [r for se in evals for r in self.baseline_rows(seed, se) if r["method"] in methods]
        trained = [m for m in methods if m not in BASELINES]
        if trained:
            stage_data = self.stage_data(split, seed, trained)
            for method in trained:
                yield self.train_and_eval(method, seed, stage_data, evals)

    def stage_data(self, split: Split, seed: int, methods: list[str]) -> dict:
        """Training and dev items for each label source: gold answers, and the ICL teacher's answers with activations
        (stored, or with `--teacher online` the ICL prompts to compute them from per batch) and, when a method trains
        on soft labels, its next-token distributions."""
        prompts, policy = self.teacher_prompts(split, seed)
        teacher = self.teacher_targets(prompts, policy, seed, methods)
        plain = [self.encode(i) for i in self.teacher_queries(split)]
        ids, logp = teacher.top_ids or [None] * len(plain), teacher.top_logp or [None] * len(plain)
        icl_prompts = [p.prompt if self.cfg.teacher == "online" else None for p in prompts]
        icl = [Item(p.prompt, *t) for p, t in zip(plain, zip(teacher.tokens, teacher.acts, ids, logp, icl_prompts))]
        labelled = [self.encode(i) for i in split.train]
        dev = plain[len(plain) - len(split.dev):]
        gold = [Item(p.prompt, p.answer) for p in labelled + dev]
        n, m = self.cfg.n, len(plain) - len(split.dev)
        return {"gold": (gold[:n], gold[n:]), "icl": (icl[:m], icl[m:]), "dev_plain": dev}

    def teacher_targets(self, prompts: list[Prompted], policy: str, seed: int, methods: list[str]) -> targets.Targets:
        """The ICL teacher's answers, activations (none for the online teacher) and soft-label distributions when a
        method needs them, from the cache or collected now with the adapter disabled."""
        soft = any(stage.loss == "soft" for method in methods for stage in METHODS[method])
        fields = {"model": self.fingerprint, "task": self.task.name, "data": self.task.data_hash(), "seed": seed,
                  "demos": policy}
        tap = self.tap if self.cfg.teacher == "cached" else None
        with self.model.disable_adapter():
            return targets.cached_collect(self.model, tap, self.tokenizer, [p.prompt for p in prompts], fields,
                                          self.task.max_new_tokens, self.teacher_stop(), self.cfg.batch_size,
                                          f"teacher s{seed}", self.cfg.soft_top_k if soft else None,
                                          self.cfg.target_dtype, self.cfg.target_store)

    def teacher_stop(self) -> str:
        """The stop string cutting teacher answers: the task's (as in evaluation), or none (EOS only, the reference's)."""
        return self.task.stop[0] if self.task.stop and self.cfg.teacher_stop == "task" else ""

    def train_and_eval(self, method: str, seed: int, data: dict, evals: list[SeedEval]) -> list[dict]:
        """Train a method's stages (reusing a trained prefix such as IA2 before IA2 → SFT), save, and evaluate it
        without demonstrations on the dev set and every evaluation set."""
        logs = self.train_stages(METHODS[method], seed, data)
        if self.cfg.save_adapters and distributed.is_main():
            adapters.save(self.model, self.out / "adapters" / f"seed{seed}" / method)
        with self.evaluated():
            extra = {"dev_accuracy": self.dev_accuracy(data["dev_plain"], f"{method} dev s{seed}"), "train": logs}
            rows = []
            for se in evals:
                measured, acts = self.evaluate(se, se.plain, f"{method} s{seed}")
                rows.append({**self.row(method, seed, se, measured, acts, 0), **extra})
                log.info("seed %d %-9s %s accuracy %.3f", seed, method, se.eval.task.name, rows[-1]["accuracy"])
        return rows

    @contextmanager
    def evaluated(self) -> Iterator[None]:
        """Evaluate the trained adapter as it is or, with --merge-bf16 (reference parity), merged into a bf16 copy."""
        if not self.cfg.merge_bf16:
            yield
            return
        trained, tap = self.model, self.tap
        self.model = adapters.merged_bf16(trained)
        self.tap = Tap(self.model, self.cfg.site, self.cfg.layers)
        try:
            yield
        finally:
            self.model, self.tap = trained, tap

    def dev_accuracy(self, dev: list[Prompted], desc: str) -> float | None:
        """Label accuracy on the dev examples without demonstrations (None for generative tasks, which would need
        generation: their hyperparameters are chosen on dev loss)."""
        if self.task.generative:
            return None
        scores = self.eval_scores(dev, self.encoder.label_ids, desc)
        return float((scores.label_probs().argmax(axis=1) == np.array([p.label for p in dev])).mean())

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
    """Run every seed and method, resuming from the (seed, method) rows already written under the same config (each
    is written as soon as it is measured); write the reports.

    With several processes (sharing `out`) every process runs every seed and method on its share of the data; the
    main process alone writes, and decides what is left to do.
    """
    exp = Experiment(cfg, out)
    rows_dir = out / "rows" / cfg.key()
    names = [ev.task.name for ev in exp.evals]
    rows = []
    for seed in tqdm(cfg.seeds, desc="seeds"):
        paths = {(m, e): rows_dir / row_file(seed, m, e, exp.task.name) for m in cfg.methods for e in names}
        todo = distributed.from_main(list(dict.fromkeys(m for (m, _), path in paths.items() if not path.exists())))
        if todo:
            for measured in exp.run_seed(seed, todo):
                if distributed.is_main():
                    for row in measured:
                        write_json(paths[row["method"], row["eval_task"]], row)
            distributed.barrier()
        rows += [json.loads(paths[m, e].read_text()) for m in cfg.methods for e in names]
    config = {**asdict(cfg), "resolved_model": models.resolve(cfg.model), "key": cfg.key()}
    result = {"config": config, "majority_accuracy": {ev.task.name: majority(ev) for ev in exp.evals},
              "n_test": {ev.task.name: len(ev.test) for ev in exp.evals},
              "rows": [{k: v for k, v in r.items() if k != "train"} for r in rows]}
    if distributed.is_main():
        write_outputs(result, rows, exp)
    distributed.barrier()
    return result


def write_outputs(result: dict, rows: list[dict], exp: Experiment) -> None:
    """The run's manifest, training logs and reports."""
    out = exp.out
    write_json(out / "manifest.json", manifest(exp.cfg, exp))
    write_json(out / "train_logs.json", [{"seed": r["seed"], "method": r["method"], "stages": r["train"]}
                                         for r in rows if "train" in r and r["eval_task"] == exp.task.name])
    write_reports(result, out)


def majority(ev: EvalSet) -> float | None:
    """Accuracy of always answering the test set's most frequent label (None for generative tasks)."""
    if ev.task.generative:
        return None
    labels = [ev.task.examples[i].answer for i in ev.test]
    return max(labels.count(c) for c in set(labels)) / len(labels)
