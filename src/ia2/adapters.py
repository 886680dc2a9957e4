"""Adapters through PEFT: a seeded fresh adapter per run, and its PEFT-format save."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from .paths import atomic_path


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA settings; the paper's default is rank 8, alpha 8 on q, k and o projections."""

    r: int = 8
    alpha: int = 8
    targets: tuple[str, ...] = ("q_proj", "k_proj", "o_proj")
    dropout: float = 0.0

    def peft(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets),
                          lora_dropout=self.dropout, task_type="CAUSAL_LM")


def fresh(model: nn.Module, cfg: AdapterConfig, seed: int) -> PeftModel:
    """Wrap the base model (unwrapping any earlier adapter first) in a new adapter initialised from `seed`."""
    base = model.unload() if isinstance(model, PeftModel) else model
    torch.manual_seed(seed)
    wrapped = get_peft_model(base, cfg.peft())
    wrapped.eval()
    return wrapped


def save(model: PeftModel, path: Path) -> None:
    """Save the adapter in PEFT format (loadable with PeftModel.from_pretrained), atomically."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp)
