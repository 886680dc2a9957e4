"""What left-padded batches need from prompt-learning adapters: whether prompt tuning or prefix tuning is active,
when padded rows must run alone, and a pre-hook that moves pads before the virtual tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel, PeftType
from torch import nn


def _active(model: nn.Module, peft_type: PeftType) -> bool:
    """Whether `model` has an enabled adapter of this PEFT type (`disable_adapter()` turns it off for the teacher)."""
    return (
        isinstance(model, PeftModel)
        and model.has_active_enabled_adapter
        and model.active_peft_config.peft_type == peft_type
    )


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
