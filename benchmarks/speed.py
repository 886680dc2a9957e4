"""Side-by-side speed of our pipeline and the faithful reference loop (reference_loop.py), same model, same data.

    python benchmarks/speed.py --device cpu --model tiny|smollm2-135m|qwen3-4b-shape [--n 100] [--quick]

Times teacher activations at T=1 and T=32, an IA2 epoch, its optimizer steps alone, an SFT epoch (epochs include their
dev evaluations) and the whole IA2 → SFT pipeline; writes a JSON and a markdown table (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import random
import resource
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models
from torch import nn
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import reference_loop
from ia2.config import TrainConfig
from ia2.data.prompts import Encoder, draw_demos
from ia2.data.tasks import Example, Task
from ia2.model import adapters, loading
from ia2.model.taps import Tap
from ia2.paths import write_json, write_text
from ia2.teacher import targets
from ia2.teacher.targets import CollectSettings
from ia2.training.loop import Item, train_stage
from ia2.training.methods import IA2, SFT, Stage

# Qwen3-4B's shape, from the config.json on its Hugging Face model card (Qwen/Qwen3-4B-Base; Qwen/Qwen3-4B has the same
# shape): 4.02B parameters (3.6B without the tied embedding), built here with random weights, nothing downloaded.
QWEN3_4B = dict(
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=1024,
)
# Qwen3-4B's layout (36 layers, 4 query heads per KV head, tied embeddings) at tiny widths: every pass has the full
# model's count of layers, adapted modules and kernel launches but almost no arithmetic, so on a CPU its time is the
# host's per-layer overhead (a proxy for what a GPU waits on).
QWEN3_4B_LAYOUT = {
    **{k: v for k, v in QWEN3_4B.items() if k != "vocab_size"},
    **dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=8, intermediate_size=128),
}
SHAPES = {"tiny": TINY, "qwen3-4b-shape": QWEN3_4B, "qwen3-4b-layout": QWEN3_4B_LAYOUT}
MODELS = ("tiny", "smollm2-135m", "qwen3-4b-shape", "qwen3-4b-layout")

# NVIDIA's H100 SXM datasheet: 989 TFLOP/s dense bf16 tensor-core peak (1,979 is the 2:4-sparsity figure).
H100_SXM_BF16_TFLOPS = 989.0

WORDS = tuple(
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher force "
    "education".split()
)
LABELS = ("red", "blue", "green", "black")

PHASES = ("teacher_t1", "teacher_tlong", "ia2_epoch", "ia2_steps", "sft_epoch", "pipeline")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS, LABELS and the prompt template, for the random-weight models."""
    tok = Tokenizer(tok_models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Question: {w} {w}\nAnswer: {w}\n\nQuestion: {w}" for w in WORDS + LABELS]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    hf.padding_side = "left"
    return hf


def random_model(shape: dict, tok: PreTrainedTokenizerBase, device: str, dtype: torch.dtype) -> nn.Module:
    """A frozen Qwen3 of this shape with random weights, initialised directly on the device in `dtype`."""
    config = Qwen3Config(
        **{"vocab_size": len(tok), **shape},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval().requires_grad_(False)


def build(name: str, device: str, dtype: torch.dtype) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model and tokenizer named by --model."""
    if name == "smollm2-135m":
        return loading.load(name, dtype, device)
    tok = word_tokenizer()
    return random_model(SHAPES[name], tok, device, dtype), tok


def synthetic_task(size: int, words: int, seed: int) -> Task:
    """A classification task of random-word questions; the label is a function of the first word."""
    rng = random.Random(seed)
    examples = []
    for i in range(size):
        question = [rng.choice(WORDS) for _ in range(words)]
        examples.append(Example(" ".join(question), LABELS[WORDS.index(question[0]) % len(LABELS)], f"synthetic:{i}"))
    return Task("synthetic", tuple(examples), LABELS)


@dataclass(frozen=True)
class Data:
    """Token ids per query, training queries first: ICL prompt, prompt without demos, gold answer."""

    icl: list[list[int]]
    plain: list[list[int]]
    gold: list[list[int]]
    n: int


def make_data(tok: PreTrainedTokenizerBase, context: int, n: int, dev: int, demos: int, words: int, seed: int) -> Data:
    """N training and `dev` dev queries; each ICL prompt has min(demos, N−1) demos drawn from the training queries."""
    task = synthetic_task(n + dev, words, seed)
    encoder, rng, train = Encoder(task, tok, context), random.Random(seed), list(range(n))
    k = min(demos, n - 1)
    demos = [draw_demos(train, k, rng, exclude=i if i < n else None) for i in range(n + dev)]
    icl = [encoder.encode(task.examples[i], [task.examples[d] for d in drawn]) for i, drawn in enumerate(demos)]
    plain = [encoder.encode(ex) for ex in task.examples]
    return Data([p.prompt for p in icl], [p.prompt for p in plain], [p.answer for p in plain], n)


def sync(device: str) -> None:
    """Wait for queued device work, so that wall-clock times cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float, int | None]:
    """fn's result, its wall-clock seconds and, on CUDA, its peak allocated device memory in bytes."""
    cuda = device.startswith("cuda")
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() if cuda else None


def host_peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in matrix products: all, less an untied input embedding (a lookup)."""
    total = sum(p.numel() for p in model.parameters())
    tied = model.config.get_text_config().tie_word_embeddings
    return total if tied else total - model.get_input_embeddings().weight.numel()


@dataclass
class Row:
    """One phase, both sides: seconds for `examples` examples (the reference's scaled from `ref_measured`)."""

    phase: str
    label: str
    examples: int
    ours_s: float
    ref_s: float
    ref_measured: int
    flops: float
    ours_device_peak: int | None
    ref_device_peak: int | None
    host_peak_rss: int
    note: str = ""
    speedup: float = 0.0
    ours_rate: float = 0.0
    ref_rate: float = 0.0
    ours_floor_fraction: float | None = None
    ref_floor_fraction: float | None = None

    def finish(self, peak_flops: float | None) -> Row:
        """Fill in rates, the speed-up and, given a peak FLOP rate, each side's fraction of the compute floor."""
        self.speedup = self.ref_s / self.ours_s
        self.ours_rate, self.ref_rate = self.examples / self.ours_s, self.examples / self.ref_s
        if peak_flops:
            floor = self.flops / peak_flops
            self.ours_floor_fraction, self.ref_floor_fraction = floor / self.ours_s, floor / self.ref_s
        return self


def total_tokens(seqs: Sequence[Sequence[int]]) -> int:
    """Total length of some token sequences."""
    return sum(len(s) for s in seqs)


def reference_examples(items: Sequence[Item]) -> list[reference_loop.Example]:
    """The same training examples in the reference loop's form."""
    return [reference_loop.Example(i.prompt, i.answer, i.acts) for i in items]


def examples_seen(steps: int, n: int, batch: int) -> int:
    """Training examples our trainer consumed in `steps` steps of batches of `batch` over epochs of n examples."""
    full, rest = divmod(steps, math.ceil(n / batch))
    return full * n + min(rest * batch, n)


class Bench:
    """Runs every phase for both sides on one model and one data set, and keeps the rows."""

    def __init__(
        self,
        args: argparse.Namespace,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        data: Data,
        report: Callable[[list[Row]], object],
    ) -> None:
        self.args, self.model, self.tok, self.data, self.report = args, model, tok, data, report
        self.tap, self.rows = Tap(model), []
        self.params = matmul_params(model)
        self.device = str(model.device)
        self.peak_flops = args.peak_tflops * 1e12 if self.device.startswith("cuda") else None
        self.per_example: dict[str, float] = {}

    def base(self) -> nn.Module:
        """The frozen model without any adapter (the teacher)."""
        self.model = adapters.unwrap(self.model)
        return self.model

    def student(self) -> nn.Module:
        """The model with a fresh LoRA adapter (r8, α8 on q, k, o), seeded alike for both sides."""
        self.model = adapters.fresh(self.model, "lora", self.args.seed)
        return self.model

    def ours_collect(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> targets.Targets:
        """Our batched teacher collection, EOS as the only stop (as the reference)."""
        settings = CollectSettings(max_new_tokens, "", self.args.collect_batch)
        return targets.collect(self.base(), self.tap, self.tok, prompts, settings)

    def ref_collect(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> tuple[list, list]:
        """The reference's teacher collection."""
        return reference_loop.collect(self.base(), prompts, max_new_tokens)

    def items(self, teacher: targets.Targets) -> tuple[list[Item], list[Item]]:
        """IA2 items (plain prompt, teacher answer, activations), split into training and dev."""
        items = [Item(p, t, a) for p, t, a in zip(self.data.plain, teacher.tokens, teacher.acts)]
        return items[: self.data.n], items[self.data.n :]

    def gold(self) -> tuple[list[Item], list[Item]]:
        """SFT items (plain prompt, gold answer), split into training and dev."""
        items = [Item(p, a) for p, a in zip(self.data.plain, self.data.gold)]
        return items[: self.data.n], items[self.data.n :]

    def cfg(self, **changes: Any) -> TrainConfig:
        """Our trainer's settings: the paper's defaults at --train-batch and --lr."""
        return TrainConfig(**{"lr": self.args.lr, "train_batch_size": self.args.train_batch, **changes})

    def loop_cfg(self, **changes: Any) -> reference_loop.LoopConfig:
        """The reference loop's settings at --lr."""
        return reference_loop.LoopConfig(**{"lr": self.args.lr, "seed": self.args.seed, **changes})

    def ours_train(self, train: list[Item], dev: list[Item], stage: Stage, cfg: TrainConfig) -> dict:
        """Our trainer on the current student."""
        return train_stage(
            self.model, self.tap, train, dev, stage, cfg, self.args.seed, self.tok.pad_token_id, stage.loss
        )

    def add(self, row: Row) -> None:
        """Complete a row, keep it and rewrite the report, so that an interrupted run keeps its finished phases."""
        self.rows.append(row.finish(self.peak_flops))
        self.report(self.rows)

    def warm_up(self) -> None:
        """One small call of every code path on both sides, so that timings exclude first-call costs."""
        prompts = self.data.icl[:2]
        self.ours_collect(prompts, 2)
        teacher = self.ours_collect(prompts, 1)
        self.ref_collect(prompts[:1], 2)
        for stage, items in ((IA2, self.items(teacher)[0][:2]), (SFT, self.gold()[0][:2])):
            ref = reference_examples(items)
            self.student()
            self.ours_train(items, items[:1], stage, self.cfg(max_steps=1))
            reference_loop.train(self.model, ref, ref[:1], stage.loss, self.loop_cfg(max_epochs=1, eval_every=1))

    def teacher_row(self, phase: str, max_new_tokens: int, ref_n: int) -> targets.Targets:
        """Teacher activations for every query: ours on all, the reference on the first `ref_n`, scaled."""
        prompts = self.data.icl
        ours, ours_s, ours_peak = timed(lambda: self.ours_collect(prompts, max_new_tokens), self.device)
        ref, ref_s, ref_peak = timed(lambda: self.ref_collect(prompts[:ref_n], max_new_tokens), self.device)
        answers = [len(t) for t in ours.tokens]
        flops = 2 * self.params * (total_tokens(prompts) + sum(answers) - len(answers))
        note = (
            f"answers: ours {sum(answers) / len(answers):.1f} tokens, reference "
            f"{sum(len(t) for t in ref[0]) / ref_n:.1f} (EOS is the only stop)"
        )
        label = f"teacher activations, T={max_new_tokens}"
        self.per_example[phase] = ref_s / ref_n
        self.add(
            Row(
                phase,
                label,
                len(prompts),
                ours_s,
                ref_s * len(prompts) / ref_n,
                ref_n,
                flops,
                ours_peak,
                ref_peak,
                host_peak_rss(),
                note,
            )
        )
        return ours

    def work(self, train: Sequence[Item], dev: Sequence[Item], seen: int, dev_passes: int) -> float:
        """FLOPs needed for `seen` training examples (6·P·tokens, at the mean length of `train`) and `dev_passes`
        passes over `dev` (2·P·tokens); inputs are prompt ⊕ answer[:-1]."""
        train_tokens = sum(len(i.prompt) + len(i.answer) - 1 for i in train) / len(train)
        dev_tokens = sum(len(i.prompt) + len(i.answer) - 1 for i in dev)
        return 6 * self.params * train_tokens * seen + 2 * self.params * dev_tokens * dev_passes

    def epoch_row(
        self, phase: str, label: str, stage: Stage, train: list[Item], dev: list[Item], with_dev: bool
    ) -> None:
        """One epoch of `stage` on both sides, dev passes every 2 steps or none; the reference on a prefix, scaled."""
        limit = min(self.args.ref_train_n or len(train), len(train))
        ours_dev = dev if with_dev else dev[:1]
        off = {} if with_dev else {"eval_every": 10**9}
        self.student()
        cfg = self.cfg(max_epochs=1, patience=10**9, **off)
        log, ours_s, ours_peak = timed(lambda: self.ours_train(train, ours_dev, stage, cfg), self.device)
        ref_train, ref_dev = reference_examples(train), reference_examples(dev)
        loop = self.loop_cfg(max_epochs=1, patience=None, limit=limit, eval_every=2 if with_dev else None)
        self.student()
        ref_log, ref_s, ref_peak = timed(
            lambda: reference_loop.train(self.model, ref_train, ref_dev, stage.loss, loop), self.device
        )
        passes = math.ceil(len(train) / 4) // 2 if with_dev else 0
        note = (
            f"dev passes: ours {len(log['history'])} (batch {TrainConfig.dev_batch_size}, one before training), "
            f"reference {len(ref_log.dev_losses)} in its {ref_log.examples} timed examples (batch 1)"
            if with_dev
            else "no dev passes"
        )
        self.per_example[phase] = ref_s / ref_log.examples
        self.add(
            Row(
                phase,
                label,
                len(train),
                ours_s,
                ref_s * len(train) / ref_log.examples,
                ref_log.examples,
                self.work(train, dev, len(train), passes),
                ours_peak,
                ref_peak,
                host_peak_rss(),
                note,
            )
        )

    def ours_pipeline(self) -> list[dict]:
        """Our collection, then IA2 and SFT each to early stop (patience 5) or --max-epochs, best state restored."""
        teacher = self.ours_collect(self.data.icl, 1)
        self.student()
        cfg = self.cfg(max_epochs=self.args.max_epochs)
        return [self.ours_train(*self.items(teacher), IA2, cfg), self.ours_train(*self.gold(), SFT, cfg)]

    def ref_pipeline(self) -> list[reference_loop.Log]:
        """The reference's collection, then IA2 and SFT each to early stop (patience 5) or --max-epochs."""
        tokens, acts = self.ref_collect(self.data.icl, 1)
        n = self.data.n
        icl = reference_examples([Item(p, t, a) for p, t, a in zip(self.data.plain, tokens, acts)])
        gold = reference_examples([Item(p, a) for p, a in zip(self.data.plain, self.data.gold)])
        self.student()
        cfg = self.loop_cfg(max_epochs=self.args.max_epochs)
        return [
            reference_loop.train(self.model, icl[:n], icl[n:], "ia2", cfg),
            reference_loop.train(self.model, gold[:n], gold[n:], "ce", cfg),
        ]

    def pipeline_row(self, ia2_items: tuple[list[Item], list[Item]]) -> None:
        """The whole IA2 → SFT pipeline; with --quick the reference's time is estimated from its measured phases."""
        n, batch = self.data.n, self.args.train_batch
        logs, ours_s, ours_peak = timed(self.ours_pipeline, self.device)
        seen = [examples_seen(log["steps"], n, batch) for log in logs]
        stages = zip(logs, seen, (ia2_items, self.gold()))
        flops = 2 * self.params * total_tokens(self.data.icl) + sum(
            self.work(*items, stage_seen, len(log["history"])) for log, stage_seen, items in stages
        )
        ours_note = "ours " + ", ".join(f"{log['stage']} {log['steps']} steps/{log['epochs']} ep" for log in logs)
        if self.args.quick:
            ref_s = (
                self.per_example["teacher_t1"] * len(self.data.icl)
                + self.per_example["ia2_epoch"] * seen[0]
                + self.per_example["sft_epoch"] * seen[1]
            )
            note = f"{ours_note}; reference estimated: the same steps at its measured per-example rates"
            self.add(
                Row(
                    "pipeline",
                    f"IA2 → SFT pipeline, N={n}",
                    n,
                    ours_s,
                    ref_s,
                    0,
                    flops,
                    ours_peak,
                    None,
                    host_peak_rss(),
                    note,
                )
            )
            return
        ref_logs, ref_s, ref_peak = timed(self.ref_pipeline, self.device)
        ref_note = "reference " + ", ".join(
            f"{name} {log.steps} steps/{log.epochs} ep" for name, log in zip(("ia2", "ce"), ref_logs)
        )
        self.add(
            Row(
                "pipeline",
                f"IA2 → SFT pipeline, N={n}",
                n,
                ours_s,
                ref_s,
                n,
                flops,
                ours_peak,
                ref_peak,
                host_peak_rss(),
                f"{ours_note}; {ref_note}",
            )
        )

    def run(self) -> list[Row]:
        """Every phase in order, after one warm-up."""
        args, total = self.args, len(self.data.icl)
        self.warm_up()
        teacher = self.teacher_row("teacher_t1", 1, min(args.ref_t1_n or total, total))
        self.teacher_row("teacher_tlong", args.t_long, min(args.ref_long_n, total))
        ia2_items = self.items(teacher)
        self.epoch_row("ia2_epoch", "IA2 epoch incl. dev evaluations", IA2, *ia2_items, True)
        self.epoch_row("ia2_steps", "IA2 epoch, optimizer steps only", IA2, *ia2_items, False)
        self.epoch_row("sft_epoch", "SFT epoch incl. dev evaluations", SFT, *self.gold(), True)
        self.pipeline_row(ia2_items)
        return self.rows


def gib(size: int | None) -> str:
    """Bytes as GiB for the table, or a dash."""
    return "–" if size is None else f"{size / 2**30:.2f} GiB"


def percent(fraction: float | None) -> str:
    """A fraction of the compute floor as a percentage, or a dash off CUDA."""
    return "–" if fraction is None else f"{100 * fraction:.2f}%"


def model_shape(model: nn.Module) -> dict:
    """The model's class, shape and parameter counts."""
    c = model.config.get_text_config()
    return {
        "class": type(model).__name__,
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "intermediate": c.intermediate_size,
        "vocab": c.vocab_size,
        "tied_embeddings": bool(c.tie_word_embeddings),
        "params": sum(p.numel() for p in model.parameters()),
        "matmul_params": matmul_params(model),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return names[0] if names else platform.processor() or platform.machine()


def device_slug(device: str) -> str:
    """The device's name as a file-name prefix (`nvidia-h100-80gb-hbm3`; `cpu` for any CPU), so that result files
    say which card measured them."""
    if not device.startswith("cuda"):
        return "cpu"
    return "-".join("".join(c if c.isalnum() else " " for c in device_name(device).lower()).split())


def meta(args: argparse.Namespace, argv: Sequence[str], model: nn.Module, data: Data, device: str) -> dict:
    """Everything needed to read and reproduce the numbers: machine, versions, model, data, settings, command."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/speed.py", *argv]),
        "device": device,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "model": {"name": args.model, **model_shape(model)},
        "data": {
            "n": data.n,
            "dev": len(data.icl) - data.n,
            "demos": min(args.demos, data.n - 1),
            "icl_prompt_tokens": round(total_tokens(data.icl) / len(data.icl), 1),
            "plain_prompt_tokens": round(total_tokens(data.plain) / len(data.plain), 1),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device", "model")},
        "peak_tflops": args.peak_tflops if device.startswith("cuda") else None,
    }


def markdown(info: dict, rows: Sequence[Row]) -> str:
    """The report as a markdown header and table."""
    m, d, v, st = info["model"], info["data"], info["versions"], info["settings"]
    lines = [
        f"# IA2 speed: ours vs the reference loop, {m['name']} on {info['device_name']}",
        "",
        f"{info['date']} · torch {v['torch']} · transformers {v['transformers']} · peft {v['peft']} · "
        f"{info['torch_threads']} torch threads · {m['dtype']}",
        "",
        f"Model: {m['class']}, {m['layers']} layers, hidden {m['hidden']}, {m['heads']} heads ({m['kv_heads']} KV, "
        f"head_dim {m['head_dim']}), MLP {m['intermediate']}, vocab {m['vocab']}, {m['params'] / 1e6:.1f}M parameters"
        f"{' (tied embeddings)' if m['tied_embeddings'] else ''}.",
        f"Data: N={d['n']} training + {d['dev']} dev queries, {d['demos']} demos, ICL prompts {d['icl_prompt_tokens']} "
        f"tokens on average, plain prompts {d['plain_prompt_tokens']}.",
        f"Settings: our collection batch {st['collect_batch']}, our training batch {st['train_batch']} (the "
        f"reference: batch 1, accumulation 4), lr {st['lr']}, pipeline stages capped at {st['max_epochs']} epochs "
        f"each{', --quick' if st['quick'] else ''}.",
        f"Command: `{info['command']}`",
        "",
        "Speed-up: the reference's seconds over ours for the same examples. Where the reference was measured on a "
        "subset, its time is scaled by examples; `estimate`: the same optimizer steps as ours at its measured "
        "per-example rates (collection, and epochs including their dev passes).",
        "",
        "| phase | examples | ours ex/s | reference ex/s | speed-up | reference measured on | ours % of floor "
        "| reference % of floor | ours peak device | reference peak device | host peak RSS | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        measured = "estimate" if r.ref_measured == 0 else f"{r.ref_measured} of {r.examples}"
        lines.append(
            f"| {r.label} (`{r.phase}`) | {r.examples} | {r.ours_rate:.3g} | {r.ref_rate:.3g} | "
            f"{r.speedup:.2f}× | {measured} | {percent(r.ours_floor_fraction)} | "
            f"{percent(r.ref_floor_fraction)} "
            f"| {gib(r.ours_device_peak)} | {gib(r.ref_device_peak)} | {gib(r.host_peak_rss)} | {r.note} |"
        )
    if info["peak_tflops"]:
        lines += [
            "",
            f"Compute floor: 2·P·tokens FLOPs forward, 6·P·tokens training, at {info['peak_tflops']} "
            f"TFLOP/s (P = {m['matmul_params'] / 1e9:.2f}B matmul parameters).",
        ]
    return "\n".join(lines) + "\n"


def write(out: Path, info: dict, rows: Sequence[Row]) -> str:
    """Write `out`.json and `out`.md atomically; return the markdown."""
    write_json(out.parent / f"{out.name}.json", {"meta": info, "rows": [asdict(r) for r in rows]})
    table = markdown(info, rows)
    write_text(out.parent / f"{out.name}.md", table)
    return table


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options; subsample sizes left unset follow --quick."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    p.add_argument("--model", choices=MODELS, default="tiny")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--n", type=int, default=100, help="training queries")
    p.add_argument("--dev", type=int, default=50, help="dev queries")
    p.add_argument("--demos", type=int, default=5, help="demonstrations per ICL prompt")
    p.add_argument("--words", type=int, default=15, help="words per question (about 21-token plain prompts)")
    p.add_argument("--t-long", type=int, default=32, help="answer tokens in the long teacher row")
    p.add_argument("--collect-batch", type=int, default=32, help="our teacher collection's batch size")
    p.add_argument(
        "--train-batch", type=int, default=4, help="our training batch (the reference's effective batch is 4)"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-epochs", type=int, default=5, help="epoch cap of each pipeline stage, both sides")
    p.add_argument(
        "--quick",
        action="store_true",
        help="time the reference on subsets and scale; estimate its pipeline from its measured phases",
    )
    p.add_argument("--ref-t1-n", type=int, help="reference T=1 queries timed (default: all; --quick: 32)")
    p.add_argument("--ref-long-n", type=int, help="reference long-answer queries timed (default 32; --quick: 8)")
    p.add_argument(
        "--ref-train-n", type=int, help="reference training examples timed per epoch (default: all; --quick: 24)"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_SXM_BF16_TFLOPS,
        help="peak bf16 TFLOP/s for the compute floor (H100 SXM dense: 989; H100 PCIe: 756)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output path without suffix (default benchmarks/results/<device>-<model>)")
    args = p.parse_args(argv)
    if args.ref_t1_n is None and args.quick:
        args.ref_t1_n = 32
    if args.ref_long_n is None:
        args.ref_long_n = 8 if args.quick else 32
    if args.ref_train_n is None and args.quick:
        args.ref_train_n = 24
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Build the model and data, time every phase on both sides, write the report and print its table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    device = loading.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    model, tok = build(args.model, device, dtype)
    data = make_data(
        tok, model.config.get_text_config().max_position_embeddings, args.n, args.dev, args.demos, args.words, args.seed
    )
    out = args.out or Path(__file__).resolve().parent / "results" / f"{device_slug(device)}-{args.model}"
    info = meta(args, argv, model, data, device)
    rows = Bench(args, model, tok, data, lambda done: write(out, info, done)).run()
    print(markdown(info, rows), end="")


if __name__ == "__main__":
    main()
