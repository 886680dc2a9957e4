"""Packed adapters: several LoRA or IA3 adapters of one PEFT model trained in one pass, each applied to its own rows.

The adapters of a sweep cell (its seeds × learning rates) share the frozen base model, so one forward and backward
pass can serve them all: the base layer runs once over every row and each adapted layer adds, per row, the update of
that row's adapter (LoRA: a batched product with its A and B; IA3: its scaling vector). The adapters stay separate
PEFT parameters, so each keeps its own optimizer state and is saved in PEFT format as before. PEFT's own mixed-adapter
batches (`adapter_names=`) are inference-only and loop over adapters; this is the training counterpart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.ia3 import IA3Layer
from peft.tuners.ia3 import Linear as IA3Linear
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn

from ia2.config.adapter_kinds import pack_refusal
from ia2.errors import IA2Error
from ia2.model import memory

if TYPE_CHECKING:
    from ia2.config import RunConfig
    from ia2.training.loop import Item


def _layers(model: nn.Module) -> list[nn.Module]:
    """The model's LoRA and IA3 layers; any other adapted layer (embedding, convolution) is refused."""
    layers = [m for m in model.modules() if isinstance(m, (LoraLayer, IA3Layer))]
    for layer in layers:
        if not isinstance(layer, (LoraLinear, IA3Linear)):
            raise IA2Error(f"packed training adapts linear layers only, not {type(layer).__name__}")
    return layers


def _lora_forward(layer: LoraLinear, names: Sequence[str], sizes: Sequence[int], rows: torch.Tensor):
    """A LoRA layer's forward that adds adapter names[g]'s update to the g-th group of sizes[g] rows (the base output
    alone when adapters are disabled). Equal groups, the usual case, take one batched product per adapter over a
    [K, rows × length, in] view; unequal ones a product per row with its adapter's weights gathered."""
    scaling = torch.tensor([float(layer.scaling[n]) for n in names], device=rows.device)
    equal = len(set(sizes)) == 1

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = layer.base_layer(x, *args, **kwargs)
        if layer.disable_adapters:
            return result
        a = torch.stack([layer.lora_A[n].weight for n in names])  # [K, r, in]
        b = torch.stack([layer.lora_B[n].weight for n in names])  # [K, out, r]
        scale = scaling.to(a.dtype)
        if equal:
            h = x.to(a.dtype).reshape(len(names), -1, x.shape[-1])  # [K, rows × length, in]
            delta = (torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2)) * scale[:, None, None]).view_as(
                result
            )
        else:
            h = torch.bmm(x.to(a.dtype), a[rows].transpose(1, 2))  # x [B, S, in]
            delta = torch.bmm(h, b[rows].transpose(1, 2)) * scale[rows][:, None, None]
        return (result + delta).to(result.dtype)

    return forward


def _ia3_forward(layer: IA3Linear, names: Sequence[str], rows: torch.Tensor):
    """An IA3 layer's forward that scales row b by adapter names[rows[b]]'s vector (on the input of a feed-forward
    layer, on the output of any other), as PEFT's forward does for one adapter."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if layer.disable_adapters:
            return layer.base_layer(x, *args, **kwargs)
        vectors = torch.stack([layer.ia3_l[n].flatten() for n in names])[rows]
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (-1,)
        if layer.is_feedforward:
            return layer.base_layer((x.to(vectors.dtype) * vectors.view(shape)).to(x.dtype), *args, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        return (result * vectors.view(shape)).to(result.dtype)

    return forward


@contextmanager
def routed(model: nn.Module, names: Sequence[str], sizes: Sequence[int]) -> Iterator[None]:
    """While open, the model's forward passes send the first sizes[0] rows of a batch through adapter names[0], the
    next sizes[1] through names[1], and so on; the base model runs once for all rows."""
    layers = _layers(model)
    device = next(model.parameters()).device
    rows = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(list(sizes))).to(device)
    for layer in layers:
        if isinstance(layer, LoraLayer):
            layer.forward = _lora_forward(layer, names, sizes, rows)
        else:
            layer.forward = _ia3_forward(layer, names, rows)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def lane_name(index: int) -> str:
    """The PEFT adapter name of a pack's index-th adapter."""
    return f"pack{index}"


@contextmanager
def lanes(model: PeftModel, states: Sequence[Mapping[str, torch.Tensor]]) -> Iterator[list[str]]:
    """Add one trainable adapter per state (the active adapter's config, loaded with that state) beside the model's own
    and yield their names; they are removed afterwards and the model's own adapter is active again. All of them are
    made PEFT-active so that `disable_adapter()` (the online teacher) turns them off and on again alike."""
    own = model.active_adapter
    names = [lane_name(i) for i in range(len(states))]
    try:
        with torch.random.fork_rng(devices=[]):  # PEFT initialises each new adapter randomly before it is loaded
            for name, state in zip(names, states):
                model.add_adapter(name, model.peft_config[own])
                set_peft_model_state_dict(model, dict(state), adapter_name=name)
        model.base_model.set_adapter(names)
        yield names
    finally:
        model.base_model.set_adapter(own)
        for name in names:
            if name in model.peft_config:
                model.delete_adapter(name)
        model.base_model.set_adapter(own)


def parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The trainable parameters of adapter `name`, in model order."""
    return [p for n, p in model.named_parameters() if f".{name}." in f"{n}." and p.requires_grad]


def state(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """A detached copy of adapter `name`'s weights, keyed as the model's own adapter's state dict is."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


def suggested(model: nn.Module, cfg: RunConfig, trains: Sequence[Sequence[Item]]) -> int:
    """How many adapters to pack when `pack` is not set: one on a CPU (already compute-bound at batch 4, so packing
    does not pay), under FSDP, and for kinds that do not pack; on a GPU all of them (`trains`: each one's training
    items), up to what half the available device memory holds by `memory`'s estimate of a training step."""
    device = next(model.parameters()).device
    if device.type != "cuda" or cfg.runtime.fsdp or pack_refusal(cfg.adapter) or not trains:
        return 1
    width = max(len(i.prompt) + len(i.answer) for items in trains for i in items)
    keep = max(len(i.answer) for items in trains for i in items)
    per_lane = memory.peak_bytes(memory.Shape.of(model), cfg.train.train_batch_size, width, keep, True)
    return max(1, min(len(trains), memory.available_bytes(device) // 2 // per_lane))
