"""Adapters through PEFT (LoRA, IA3, prompt tuning, prefix tuning): a seeded fresh adapter per run, its PEFT-format
save, and what left-padded batches need from prompt-learning adapters."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PeftType,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from torch import nn

from .errors import IA2Error
from .paths import atomic_path

KINDS = ("lora", "ia3", "prompt", "prefix")


@dataclass(frozen=True)
class AdapterConfig:
    """Which PEFT adapter and its settings; the default is the paper's LoRA, rank 8, alpha 8 on q, k and o projections.

    `targets` serve LoRA and IA3, `feedforward` (a subset of `targets`, scaled at their input) IA3 only, and
    `num_virtual_tokens` prompt and prefix tuning. The paper trains IA3 at larger rates, lr in {1e-3, 1e-2, 1e-1}.
    """

    r: int = 8
    alpha: int = 8
    targets: tuple[str, ...] = ("q_proj", "k_proj", "o_proj")
    dropout: float = 0.0
    kind: str = "lora"
    num_virtual_tokens: int = 20
    feedforward: tuple[str, ...] = ()

    def validate(self) -> None:
        """Reject settings the chosen kind cannot use, with the option's name."""
        if self.kind not in KINDS:
            raise IA2Error(f"unknown --adapter {self.kind!r}: choose from {', '.join(KINDS)}")
        if self.feedforward and self.kind != "ia3":
            raise IA2Error(f"--ia3-feedforward applies to --adapter ia3 only, not {self.kind}")
        if self.kind in ("lora", "ia3") and not self.targets:
            raise IA2Error(f"--adapter {self.kind} needs at least one target module (--lora-targets)")
        if self.kind == "lora" and self.r < 1:
            raise IA2Error(f"--lora-r must be at least 1, got {self.r}")
        if self.kind == "lora" and not 0 <= self.dropout < 1:
            raise IA2Error(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.kind == "ia3" and not set(self.feedforward) <= set(self.targets):
            raise IA2Error(f"--ia3-feedforward {','.join(self.feedforward)} must be among the targets "
                           f"{','.join(self.targets)}")
        if self.kind in ("prompt", "prefix") and self.num_virtual_tokens < 1:
            raise IA2Error(f"--num-virtual-tokens must be at least 1, got {self.num_virtual_tokens}")

    def peft(self) -> PeftConfig:
        """The PEFT config for this kind (prompt tuning starts from random virtual-token embeddings)."""
        self.validate()
        if self.kind == "lora":
            return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets),
                              lora_dropout=self.dropout, task_type="CAUSAL_LM")
        if self.kind == "ia3":
            return IA3Config(target_modules=list(self.targets), feedforward_modules=list(self.feedforward),
                             task_type="CAUSAL_LM")
        if self.kind == "prompt":
            return PromptTuningConfig(num_virtual_tokens=self.num_virtual_tokens, task_type="CAUSAL_LM")
        return PrefixTuningConfig(num_virtual_tokens=self.num_virtual_tokens, task_type="CAUSAL_LM")


def unwrap(model: nn.Module) -> nn.Module:
    """The base model without its adapter: LoRA and IA3 layers are removed; prompt learning never touched it."""
    if not isinstance(model, PeftModel):
        return model
    return model.get_base_model() if model.active_peft_config.is_prompt_learning else model.unload()


def _check_architecture(model: nn.Module, kind: str) -> None:
    """Prefix tuning feeds its virtual tokens as a key/value cache, taken only by full or sliding attention."""
    types = getattr(model.config.get_text_config(), "layer_types", None) or []
    other = sorted(set(types) - {"full_attention", "sliding_attention"})
    if kind == "prefix" and other:
        raise IA2Error(f"prefix tuning needs a key/value cache in every layer; {type(model).__name__} also has "
                       f"{', '.join(other)} layers")


def fresh(model: nn.Module, cfg: AdapterConfig, seed: int) -> PeftModel:
    """Wrap the base model (unwrapping any earlier adapter first) in a new adapter initialised from `seed`."""
    peft_cfg = cfg.peft()
    base = unwrap(model)
    _check_architecture(base, cfg.kind)
    torch.manual_seed(seed)
    try:
        wrapped = get_peft_model(base, peft_cfg)
    except ValueError as exc:
        raise IA2Error(f"cannot add a {cfg.kind} adapter to {type(base).__name__}: {str(exc).splitlines()[0]}") from exc
    wrapped.eval()
    return wrapped


def save(model: PeftModel, path: Path) -> None:
    """Save the adapter in PEFT format (loadable with PeftModel.from_pretrained), atomically."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp)


def merged_bf16(model: PeftModel) -> nn.Module:
    """A bfloat16 copy of the model with its LoRA or IA3 adapter merged in: how the reference code evaluates (parity
    only: the merge rounds the small update onto the bf16 grid of the base weights, so it is not the trained model)."""
    kind = model.peft_config[model.active_adapter].peft_type
    if kind not in (PeftType.LORA, PeftType.IA3):
        raise IA2Error(f"only LoRA and IA3 adapters can be merged, not {kind.value}")
    merged = copy.deepcopy(model).to(torch.bfloat16).merge_and_unload()
    return merged.eval()


def _active(model: nn.Module, peft_type: PeftType) -> bool:
    """Whether `model` has an enabled adapter of this PEFT type (`disable_adapter()` turns it off for the teacher)."""
    return (isinstance(model, PeftModel) and model.has_active_enabled_adapter
            and model.active_peft_config.peft_type == peft_type)


def prompt_tuning_active(model: nn.Module) -> bool:
    """Whether an enabled prompt-tuning adapter will prepend virtual tokens (PEFT then drops explicit position ids)."""
    return _active(model, PeftType.PROMPT_TUNING)


def _sliding_window(model: nn.Module) -> int | None:
    """The sliding attention window if some layer has one (assumed so when the config names no layer types)."""
    config = model.config.get_text_config()
    window, types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None) or []
    return window if window and (not types or any("sliding" in t for t in types)) else None


def rows_alone(model: nn.Module, width: int) -> bool:
    """Whether padded rows of this width must run one at a time: an enabled prefix adapter's virtual tokens sit before
    the pads, and a sliding attention window counts the pads, so a row that reaches past it would see less prefix."""
    if not _active(model, PeftType.PREFIX_TUNING):
        return False
    window = _sliding_window(model)
    return window is not None and model.active_peft_config.num_virtual_tokens + width > window


def _positions_from_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Pre-hook for a cache-less forward: each row's pads moved before the virtual tokens, so that these sit next to the
    row as in an unpadded one (sliding windows count pads), and position ids counted over the unmasked tokens."""
    mask, embeds = kwargs["attention_mask"], kwargs["inputs_embeds"]
    order = mask.argsort(dim=-1, stable=True)
    mask = mask.gather(-1, order)
    embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return args, {**kwargs, "attention_mask": mask, "inputs_embeds": embeds, "position_ids": positions}


@contextmanager
def positions_from_mask(model: PeftModel) -> Iterator[None]:
    """While open, a prompt-tuned model's cache-less forward puts the virtual tokens right before each left-padded row,
    at positions 0..n-1, and the row after them, as if unpadded (PEFT puts them before the pads, drops positions)."""
    handle = model.base_model.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
