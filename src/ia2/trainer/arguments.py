"""`IA2Config`: the usual training arguments (TRL's `SFTConfig` where TRL is installed, the `trl` extra, else
transformers' `TrainingArguments`) with IA2's settings, named as ia2 names them everywhere else, and the paper's
optimisation as defaults (Adam at a constant 1e-3, batch 4, no gradient clipping, fp32)."""

from __future__ import annotations

from dataclasses import dataclass, field

try:  # a TRL script's SFTConfig settings carry over
    from trl import SFTConfig as Arguments
except ImportError:
    from transformers import TrainingArguments as Arguments

from ia2.config import TrainConfig
from ia2.errors import IA2Error
from ia2.registry import METHODS, SITES

TEACHER_MODES = ("cached", "online")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class IA2Config(Arguments):
    """Training arguments for `IA2Trainer`: `method` is the recipe (`ia2-sft`: IA2, then SFT on the labels, the same
    adapter), trained stage by stage, each with a fresh optimizer, its own early stopping and best-state loading."""

    method: str = field(default="ia2-sft", metadata=_help("the trained recipe: ia2, sft, ia2-sft, ... (ia2 methods)"))
    site: str = field(default="attn", metadata=_help("where activations are aligned"))
    layers: list[int] | None = field(default=None, metadata=_help("decoder layers to align (default: all)"))
    per_layer_norm: bool = field(default=False, metadata=_help("normalise each layer's MSE by the teacher's scale"))
    teacher_mode: str = field(
        default="cached",
        metadata=_help("teacher activations cached on disk, or computed per batch (adapter disabled), never stored"),
    )
    target_dtype: str = field(default="float32", metadata=_help("dtype of cached teacher activations"))
    w: float = field(default=0.5, metadata=_help("CE weight of the joint ia2+sft loss"))
    k_max: int = field(default=128, metadata=_help("most demonstrations per teacher prompt (question/answer rows)"))
    demo_separator: str = field(default="\n\n", metadata=_help("text between demonstrations (prompt/completion rows)"))
    max_new_tokens: int | None = field(
        default=None, metadata=_help("longest teacher answer (default: the longest completion's tokens)")
    )
    learning_rate: float = field(default=1e-3, metadata=_help("Adam learning rate"))
    lr_scheduler_type: str = field(default="constant", metadata=_help("learning-rate schedule"))
    optim: str = field(default="adamw_torch", metadata=_help("optimizer (AdamW with no weight decay is Adam)"))
    max_grad_norm: float = field(default=0.0, metadata=_help("gradient clipping norm (0: none, as the paper)"))
    per_device_train_batch_size: int = field(default=4, metadata=_help("training batch per device"))
    remove_unused_columns: bool = field(default=False, metadata=_help("kept: the trainer reads its own columns"))
    bf16: bool | None = field(default=False, metadata=_help("bf16 mixed precision (off: fp32, as ia2 trains)"))
    gradient_checkpointing: bool | None = field(
        default=None, metadata=_help("transformers' older name of activation_checkpointing (off unless asked for)")
    )
    activation_checkpointing_kwargs: dict | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata=_help("non-reentrant checkpointing: the activation loss needs the taps' gradients"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS or METHODS[self.method].baseline:
            trained = [name for name, m in METHODS.items() if not m.baseline]
            raise IA2Error(f"IA2Config.method {self.method!r}: expected a trained method, one of {', '.join(trained)}")
        if self.site not in SITES:
            raise IA2Error(f"IA2Config.site {self.site!r}: expected one of {', '.join(SITES.names())}")
        kwargs = self.activation_checkpointing_kwargs
        if self.activation_checkpointing and isinstance(kwargs, dict) and kwargs.get("use_reentrant", False):
            raise IA2Error(
                "IA2Config.activation_checkpointing_kwargs: use_reentrant must be False (reentrant checkpointing drops "
                "the gradients of the activations IA2 aligns)"
            )
        if self.teacher_mode not in TEACHER_MODES:
            raise IA2Error(f"IA2Config.teacher_mode {self.teacher_mode!r}: expected one of {', '.join(TEACHER_MODES)}")

    def train_config(self) -> TrainConfig:
        """ia2's settings of the losses (what `ia2.training.loop` reads of a stage)."""
        return TrainConfig(
            lr=self.learning_rate,
            train_batch_size=self.per_device_train_batch_size,
            w=self.w,
            per_layer_norm=self.per_layer_norm,
        )
