"""The `ia2` command: `run` a comparison, or the offline `demo`."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from . import distributed, summary, sweep
from .adapters import KINDS, AdapterConfig
from .errors import IA2Error
from .experiment import RunConfig, run
from .methods import METHODS, parse_methods
from .train import TrainConfig

DEMO = RunConfig(
    model="gemma3-270m",
    task="bigbench:metaphor_boolean",
    methods=("zero-shot", "icl", "sft", "ia2", "ia2-sft"),
    n=8,
    seeds=(0, 1, 2),
    n_test=100,
    icl_demos="per-query",
    train=TrainConfig(max_epochs=20),
)
QUICK = {"seeds": (0,), "n_test": 40, "train": TrainConfig(max_epochs=10)}
FSDP_HELP = ("under torchrun or accelerate launch, shard the base model's weights over the processes (FSDP2), for a "
             "model too large for one device; LoRA and IA3 adapters")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/K with 0 <= I < K, got {text!r}")
    return int(index), int(count)


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_run_args(p: argparse.ArgumentParser) -> None:
    """`ia2 run` options; `train.*` and `adapter.*` destinations fill TrainConfig and AdapterConfig."""
    p.add_argument("--model", required=True, help="hub id, local folder, or embedded name (smollm2-135m, gemma3-270m)")
    p.add_argument("--task", required=True, help="a benchmark (sst2, gsm8k, …), name@source, bigbench:<task> or jsonl:<path>")
    p.add_argument("--methods", default=",".join(DEMO.methods), help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--n", "--n-train", type=int, default=8,
                   help="labelled training examples (spell it --n-train after torchrun or accelerate launch)")
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    p.add_argument("--out", type=Path, default=Path("runs/latest"))
    p.add_argument("--eval-task", type=_words, default=(), dest="eval_tasks",
                   help="comma-separated out-of-distribution test sets, scored beside the task's own")
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--n-dev", type=int, default=None, help="default N/2")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="base model weights (the paper used bfloat16 on GPUs); losses and adapters stay in fp32")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch size")
    p.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    d = p.add_argument_group("task, prompts and teacher")
    d.add_argument("--labels", type=_words, default=None, help="comma-separated label words (jsonl tasks)")
    d.add_argument("--parser", default=None, help="score generated answers with this extractor (text, gsm8k, "
                   "gsm8k-reference, boxed, sciq): makes the task generative; benchmarks declare their own")
    d.add_argument("--max-new-tokens", type=int, default=None, help="answer length T (generative tasks)")
    d.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template (instruct models)")
    d.add_argument("--k-max", type=int, default=8, help="most demonstrations per prompt")
    d.add_argument("--icl-demos", default="shared", choices=["shared", "per-query", "pool"],
                   help="ICL baseline demos: one draw from the training examples shared by all queries, one draw per "
                   "query, or (reference-code parity) per query from the pool outside train and dev")
    d.add_argument("--unlabelled", type=int, default=None, metavar="M",
                   help="low-data mode: the N labelled examples are only demonstrations; IA2 trains on M unlabelled queries")
    d.add_argument("--permutations", type=int, default=1, metavar="K",
                   help="low-data mode: demonstration orders, query j gets order j mod K")
    d.add_argument("--site", default="attn", choices=["attn", "mlp", "residual"],
                   help="where activations are aligned: attention output (the paper's), MLP output, residual stream")
    d.add_argument("--layers", type=_ints, default=None, help="comma-separated decoder layers to align (default: all)")
    d.add_argument("--soft-top-k", type=int, default=0,
                   help="teacher next-token probabilities kept for the soft method: 0 = whole vocabulary, k = top k")
    d.add_argument("--teacher", default="cached", choices=["cached", "online"],
                   help="teacher activations cached on disk, or computed per batch (adapter disabled) and never stored")
    d.add_argument("--target-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of cached teacher activations: bfloat16 halves disk and memory (long answers)")
    d.add_argument("--target-store", default="file", choices=["file", "shards"],
                   help="cached activations in one file loaded into memory, or in shards read back batch by batch "
                   "(host memory bounded by a few batches: large N x T)")
    r = p.add_argument_group("parity with the reference code (reproduces its defects on purpose)")
    r.add_argument("--teacher-stop", default="task", choices=["task", "eos"],
                   help="cut teacher answers at the task's stop string (as evaluation does) or at EOS only")
    r.add_argument("--merge-bf16", action="store_true", help="evaluate LoRA/IA3 adapters merged into bf16 weights")
    r.add_argument("--answer-prefix", default=None, help="text between prompt and answer ('' as the reference)")
    r.add_argument("--keep-last", action="store_false", dest="train.restore_best",
                   help="keep the last adapter state, not the best on dev")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=TrainConfig.lr, dest="train.lr")
    t.add_argument("--train-batch-size", type=int, default=TrainConfig.batch_size, dest="train.batch_size")
    t.add_argument("--eval-batch-size", type=int, default=TrainConfig.eval_batch_size, dest="train.eval_batch_size",
                   help="batch of the dev-loss passes (no gradients kept)")
    t.add_argument("--epochs", type=int, default=TrainConfig.max_epochs, dest="train.max_epochs")
    t.add_argument("--max-steps", type=int, default=None, dest="train.max_steps", help="cap on optimizer steps per stage")
    t.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, dest="train.eval_every")
    t.add_argument("--patience", type=int, default=TrainConfig.patience, dest="train.patience")
    t.add_argument("--w", type=float, default=TrainConfig.w, dest="train.w", help="CE weight of the joint ia2+sft loss")
    t.add_argument("--per-layer-norm", action="store_true", dest="train.per_layer_norm",
                   help="normalise each layer's MSE by the teacher's scale")
    a = p.add_argument_group("adapter")
    a.add_argument("--adapter", choices=KINDS, default=AdapterConfig.kind, dest="adapter.kind", help="PEFT adapter type")
    a.add_argument("--num-virtual-tokens", type=int, default=AdapterConfig.num_virtual_tokens,
                   dest="adapter.num_virtual_tokens", help="prompt and prefix tuning")
    a.add_argument("--ia3-feedforward", type=_words, default=AdapterConfig.feedforward, dest="adapter.feedforward",
                   help="IA3: which of the targets are feed-forward modules")
    a.add_argument("--lora-r", type=int, default=AdapterConfig.r, dest="adapter.r")
    a.add_argument("--lora-alpha", type=int, default=AdapterConfig.alpha, dest="adapter.alpha")
    a.add_argument("--lora-targets", type=_words, default=AdapterConfig.targets, dest="adapter.targets",
                   help="LoRA and IA3 target modules")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A RunConfig from `ia2 run` options: plain destinations are RunConfig fields, dotted ones nested fields."""
    values = {k: v for k, v in vars(args).items() if k not in ("command", "out")}
    nested = {section: {k.partition(".")[2]: v for k, v in values.items() if k.startswith(section + ".")}
              for section in ("train", "adapter")}
    top = {k: v for k, v in values.items() if "." not in k}
    top["methods"] = tuple(parse_methods(top["methods"]))
    return RunConfig(**top, train=TrainConfig(**nested["train"]), adapter=AdapterConfig(**nested["adapter"]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ia2", description="ICL Activation Alignment: distil demonstrations into an adapter")
    sub = p.add_subparsers(dest="command", required=True)
    add_run_args(sub.add_parser("run", help="compare methods on one model and task"))
    demo = sub.add_parser("demo", help=f"the offline demo: {DEMO.task} on {DEMO.model}")
    demo.add_argument("--quick", action="store_true", help="one seed, 40 test examples, at most 10 epochs")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    sw = sub.add_parser("sweep", help="run a YAML grid (resumable), then report it")
    sw.add_argument("config", type=Path)
    sw.add_argument("--out", type=Path, default=None, help="overrides the config's `out`")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    sw.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/K",
                    help="run only every K-th configuration from the I-th (0-based), to split a sweep across processes")
    rep = sub.add_parser("report", help="tables, curves, tests and analyses of a sweep or run folder")
    rep.add_argument("folder", type=Path)
    rep.add_argument("--select", choices=["dev_loss", "dev_accuracy", "test_accuracy"], default=None,
                     help="hyperparameter choice on dev data (default: the sweep's); test_accuracy only for parity "
                     "with the reference code, which selects on the test set")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if distributed.is_main() else logging.WARNING, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` on every adapter it makes: noise for users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        if args.command == "sweep":
            return run_sweep(args)
        if args.command == "report":
            print(summary.write(args.folder, args.select))
            return 0
        cfg = config_from_args(args) if args.command == "run" else replace(DEMO, **(QUICK if args.quick else {}),
                                                                           fsdp=args.fsdp)
        run(cfg, args.out)
    except IA2Error as exc:
        print(f"ia2: error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.finish()
    if distributed.is_main():
        print((args.out / "results.md").read_text())
        print(f"written to {args.out}/ (results.json, results.md, reliability.png, manifest.json, adapters/)")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    plan = sweep.load(args.config, args.out)
    if args.dry_run:
        print(sweep.dump_points(plan))
        return 0
    sweep.execute(plan, args.shard)
    if args.shard[1] == 1 and distributed.is_main():
        print(summary.write(plan.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
