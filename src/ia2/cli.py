"""The `ia2` command: `run` a comparison, or the offline `demo`."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from . import summary, sweep
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
    p.add_argument("--model", required=True, help="hub id, local folder, or embedded name (smollm2-135m, gemma3-270m)")
    p.add_argument("--task", required=True, help="bigbench:<task> or jsonl:<path>")
    p.add_argument("--methods", default=",".join(DEMO.methods), help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--n", type=int, default=8, help="labelled training examples")
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    p.add_argument("--out", type=Path, default=Path("runs/latest"))
    p.add_argument("--labels", type=_words, default=None, help="comma-separated label words (jsonl tasks)")
    p.add_argument("--k-max", type=int, default=8, help="most demonstrations per prompt")
    p.add_argument("--soft-top-k", type=int, default=0,
                   help="teacher next-token probabilities kept for the soft method: 0 = whole vocabulary, k = top k")
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--n-dev", type=int, default=None, help="default N/2")
    p.add_argument("--eval-task", type=_words, default=(), dest="eval_tasks",
                   help="comma-separated out-of-distribution test sets, scored beside the task's own")
    p.add_argument("--icl-demos", default="shared", choices=["shared", "per-query", "pool"],
                   help="ICL baseline demos: one draw from the training examples shared by all queries, one draw per "
                   "query, or (reference-code parity) per query from the pool outside train and dev")
    p.add_argument("--teacher-stop", default="task", choices=["task", "eos"],
                   help="cut teacher answers at the task's stop string (as evaluation does) or, for parity, at EOS only")
    p.add_argument("--merge-bf16", action="store_true",
                   help="parity: evaluate trained LoRA/IA3 adapters merged into bf16 weights, as the reference code does")
    p.add_argument("--answer-prefix", default=None, help="text between prompt and answer (parity with the reference: '')")
    p.add_argument("--parser", default=None, help="score generated answers with this extractor (text, gsm8k, "
                   "gsm8k-reference, boxed, sciq): makes the task generative; benchmarks declare their own")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length T (generative tasks)")
    p.add_argument("--unlabelled", type=int, default=None, metavar="M",
                   help="low-data mode: the N labelled examples are only demonstrations; IA2 trains on M unlabelled queries")
    p.add_argument("--permutations", type=int, default=1, metavar="K",
                   help="low-data mode: demonstration orders, query j gets order j mod K")
    p.add_argument("--site", default="attn", choices=["attn", "mlp", "residual"],
                   help="where activations are aligned: attention output (the paper's), MLP output, residual stream")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template (instruct models)")
    p.add_argument("--layers", type=_ints, default=None, help="comma-separated decoder layers to align (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch size")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="base model weights (the paper used bfloat16 on GPUs); losses and adapters stay in fp32")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--train-batch-size", type=int, default=TrainConfig.batch_size)
    t.add_argument("--epochs", type=int, default=TrainConfig.max_epochs)
    t.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps per stage")
    t.add_argument("--keep-last", action="store_true", help="parity: keep the last adapter state, not the best on dev")
    t.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    t.add_argument("--patience", type=int, default=TrainConfig.patience)
    t.add_argument("--w", type=float, default=TrainConfig.w, help="CE weight of the joint ia2+sft loss")
    t.add_argument("--per-layer-norm", action="store_true", help="normalise each layer's MSE by the teacher's scale")
    a = p.add_argument_group("adapter")
    a.add_argument("--adapter", choices=KINDS, default=AdapterConfig.kind, help="PEFT adapter type")
    a.add_argument("--num-virtual-tokens", type=int, default=AdapterConfig.num_virtual_tokens, help="prompt and prefix tuning")
    a.add_argument("--ia3-feedforward", type=_words, default=AdapterConfig.feedforward,
                   help="IA3: which of the targets are feed-forward modules")
    a.add_argument("--lora-r", type=int, default=AdapterConfig.r)
    a.add_argument("--lora-alpha", type=int, default=AdapterConfig.alpha)
    a.add_argument("--lora-targets", type=_words, default=AdapterConfig.targets, help="LoRA and IA3 target modules")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        model=args.model, task=args.task, methods=tuple(parse_methods(args.methods)), n=args.n, seeds=args.seeds, labels=args.labels,
        k_max=args.k_max, soft_top_k=args.soft_top_k, n_test=args.n_test, n_dev=args.n_dev, site=args.site, layers=args.layers, chat=args.chat, answer_prefix=args.answer_prefix, teacher_stop=args.teacher_stop, merge_bf16=args.merge_bf16, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        eval_tasks=args.eval_tasks, icl_demos=args.icl_demos, parser=args.parser, max_new_tokens=args.max_new_tokens,
        unlabelled=args.unlabelled, permutations=args.permutations,
        train=TrainConfig(lr=args.lr, batch_size=args.train_batch_size, max_epochs=args.epochs, max_steps=args.max_steps, restore_best=not args.keep_last,
                          eval_every=args.eval_every, patience=args.patience, w=args.w, per_layer_norm=args.per_layer_norm),
        adapter=AdapterConfig(r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets, kind=args.adapter,
                              num_virtual_tokens=args.num_virtual_tokens, feedforward=args.ia3_feedforward),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ia2", description="ICL Activation Alignment: distil demonstrations into an adapter")
    sub = p.add_subparsers(dest="command", required=True)
    add_run_args(sub.add_parser("run", help="compare methods on one model and task"))
    demo = sub.add_parser("demo", help=f"the offline demo: {DEMO.task} on {DEMO.model}")
    demo.add_argument("--quick", action="store_true", help="one seed, 40 test examples, at most 10 epochs")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "sweep":
            return run_sweep(args)
        if args.command == "report":
            print(summary.write(args.folder, args.select))
            return 0
        cfg = config_from_args(args) if args.command == "run" else replace(DEMO, **(QUICK if args.quick else {}))
        run(cfg, args.out)
    except IA2Error as exc:
        print(f"ia2: error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "results.md").read_text())
    print(f"written to {args.out}/ (results.json, results.md, reliability.png, manifest.json, adapters/)")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    plan = sweep.load(args.config, args.out)
    if args.dry_run:
        print(sweep.dump_points(plan))
        return 0
    sweep.execute(plan, args.shard)
    if args.shard[1] == 1:
        print(summary.write(plan.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
