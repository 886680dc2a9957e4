"""Packed adapters: several LoRA or IA3 adapters of one PEFT model trained in one pass, each applied to its own rows.

The adapters of a sweep cell (its seeds × learning rates) share the frozen base model, so one forward and backward
pass can serve them all: the base layer runs once over every row and each adapted layer adds, per row, the update of
that row's adapter (LoRA: a batched product with its A and B; IA3: its scaling vector). The adapters stay separate
PEFT parameters, so each keeps its own optimizer state and is saved in PEFT format as before. PEFT's own mixed-adapter
batches (`adapter_names=`) are inference-only and loop over adapters; this is the training counterpart.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

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
from ia2.model.forward_pass import to_device

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


class Route(NamedTuple):
    """Which adapter each row of a routed pass goes through, read by every adapted layer: the pack's adapters in use
    (fixed while it trains, so that compiled layers see the same constants), `slots` [G] the position in `names` of
    each group's adapter, `rows` [B] that of each row's, and whether the groups are of equal size."""

    names: tuple[str, ...]
    slots: torch.Tensor
    rows: torch.Tensor
    equal: bool


def _lora_forward(layer: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A LoRA layer's forward under `routed`: each group of rows gets its own adapter's update added (the base output
    alone when adapters are disabled). Equal groups, the usual case, take one batched product per adapter over a
    [G, rows × length, in] view; unequal ones a product per row with its adapter's weights gathered. Every adapter
    of the pack shares one config, so one scaling serves them all."""
    result = layer.base_layer(x, *args, **kwargs)
    route = layer.ia2_route
    if layer.disable_adapters:
        return result
    a = torch.stack([layer.lora_A[n].weight for n in route.names])  # [K, r, in]
    b = torch.stack([layer.lora_B[n].weight for n in route.names])  # [K, out, r]
    scale = float(layer.scaling[route.names[0]])
    if route.equal:
        a, b = a[route.slots], b[route.slots]
        h = x.to(a.dtype).reshape(a.shape[0], -1, x.shape[-1])  # [G, rows × length, in]
        delta = (torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2)) * scale).view_as(result)
    else:
        h = torch.bmm(x.to(a.dtype), a[route.rows].transpose(1, 2))  # x [B, S, in]
        delta = torch.bmm(h, b[route.rows].transpose(1, 2)) * scale
    return (result + delta).to(result.dtype)


def _ia3_forward(layer: IA3Linear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """An IA3 layer's forward under `routed`: row b scaled by its adapter's vector (on the input of a feed-forward
    layer, on the output of any other), as PEFT's forward does for one adapter."""
    if layer.disable_adapters:
        return layer.base_layer(x, *args, **kwargs)
    route = layer.ia2_route
    vectors = torch.stack([layer.ia3_l[n].flatten() for n in route.names])[route.rows]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (-1,)
    if layer.is_feedforward:
        return layer.base_layer((x.to(vectors.dtype) * vectors.view(shape)).to(x.dtype), *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    return (result * vectors.view(shape)).to(result.dtype)


@contextmanager
def routed(model: nn.Module, names: Sequence[str], sizes: Sequence[int]) -> Iterator[None]:
    """While open, the model's forward passes send the first sizes[0] rows of a batch through adapter names[0], the
    next sizes[1] through names[1], and so on; the base model runs once for all rows. The names are among the
    model's active adapters (a pack's, `Pack.active`): every layer reads all of them and picks by index, so a lane
    that leaves the pack changes tensors, not the constants a compiled layer was traced with."""
    layers = _layers(model)
    device = next(model.parameters()).device
    pool = tuple(model.active_adapters)
    slots = torch.tensor([pool.index(n) for n in names])
    route = Route(
        pool,
        to_device(slots, device),
        to_device(torch.repeat_interleave(slots, torch.tensor(list(sizes))), device),
        len(set(sizes)) == 1,
    )
    for layer in layers:
        layer.ia2_route = route
        layer.forward = types.MethodType(_lora_forward if isinstance(layer, LoraLayer) else _ia3_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward, layer.ia2_route


def lane_name(index: int) -> str:
    """The PEFT adapter name of a pack's index-th adapter."""
    return f"pack{index}"


def live_state(model: PeftModel, name: str) -> dict[str, torch.Tensor] | None:
    """Adapter `name`'s weights keyed as its PEFT state dict, as views of the live parameters (PEFT's state dict
    aliases LoRA's and IA3's): the key map that `copy_state` and `load_state` use, built once instead of a state-dict
    walk per copy. None where PEFT computes the state instead (prompt and prefix tuning's virtual tokens)."""
    live = get_peft_model_state_dict(model, adapter_name=name)
    storage = {p.untyped_storage().data_ptr() for n, p in model.named_parameters() if f".{name}." in f"{n}."}
    return live if all(v.untyped_storage().data_ptr() in storage for v in live.values()) else None


def copy_state(model: PeftModel, name: str, live: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """A detached copy of adapter `name`'s weights, from its `live_state` (PEFT's state dict when there is none)."""
    live = get_peft_model_state_dict(model, adapter_name=name) if live is None else live
    return {k: v.detach().clone() for k, v in live.items()}


@torch.no_grad()
def load_state(model: PeftModel, name: str, live: Mapping[str, torch.Tensor] | None, state: Mapping) -> None:
    """Put `state` into adapter `name` through its `live_state`; PEFT's loader when there is none or its keys differ."""
    if live is None or live.keys() != state.keys():
        set_peft_model_state_dict(model, dict(state), adapter_name=name)
        return
    for key, value in live.items():
        if value.shape != state[key].shape:
            raise RuntimeError(f"adapter {name}: {key} is {tuple(value.shape)}, the state's {tuple(state[key].shape)}")
        value.copy_(state[key])


def base_dropout(model: nn.Module) -> str | None:
    """The base model's dropout that training would draw, named as set (`attention_dropout=0.1`), or None: a packed
    pass draws one mask over every lane's rows, not the masks each lane draws alone, so packs refuse it."""
    config = model.config.get_text_config()
    for key, value in sorted(config.to_dict().items()):
        if ("dropout" in key or "pdrop" in key) and "classifier" not in key and _positive(value):
            return f"{key}={value:g}"
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0 and not any(k in name for k in ("lora_", "ia3_")):
            return f"{name} (p={module.p:g})"
    return None


def _positive(value: object) -> bool:
    """Whether a config value is a positive number (not a flag)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


class Pack:
    """Up to `size` trainable adapters (the model's own adapter's config) beside the model's own, added once and
    reused by every pack trained while it is open (`active`), removed on leaving; the model's own adapter stays the
    active one outside `active`."""

    def __init__(self, model: PeftModel, size: int) -> None:
        self.model, self.names = model, [lane_name(i) for i in range(size)]
        self.own, self.live, self.params = model.active_adapter, [], []

    def __enter__(self) -> Pack:
        dropout = base_dropout(self.model)
        if dropout:
            raise IA2Error(f"--pack must be 1 for this model: its dropout {dropout} would draw other masks when packed")
        try:
            with torch.random.fork_rng(devices=[]):  # PEFT initialises each new adapter randomly; it is loaded later
                for name in self.names:
                    self.model.add_adapter(name, self.model.peft_config[self.own])
                    self.live.append(live_state(self.model, name))
                    self.params.append([p for n, p in self.model.named_parameters() if f".{name}." in f"{n}."])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.base_model.set_adapter(self.own)
        for name in self.names:
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
        self.model.base_model.set_adapter(self.own)

    @contextmanager
    def active(self, states: Sequence[Mapping[str, torch.Tensor]]) -> Iterator[list[str]]:
        """Load one state per adapter into the first len(states) and make them the model's trainable, PEFT-active
        adapters (so that `disable_adapter()`, the online teacher, turns them off and on again alike); yield their
        names. The model's own adapter is the active one again afterwards."""
        if len(states) > len(self.names):
            raise ValueError(f"a pack of {len(self.names)} adapters cannot train {len(states)}")
        names = self.names[: len(states)]
        try:
            for name, live, state in zip(names, self.live, states):
                load_state(self.model, name, live, state)
            self.model.base_model.set_adapter(names)
            yield names
        finally:
            self.model.base_model.set_adapter(self.own)

    def state(self, index: int) -> dict[str, torch.Tensor]:
        """A detached copy of the index-th adapter's weights, keyed as the model's own adapter's state dict is."""
        return copy_state(self.model, self.names[index], self.live[index])


@contextmanager
def lanes(model: PeftModel, states: Sequence[Mapping[str, torch.Tensor]]) -> Iterator[list[str]]:
    """A pack of one adapter per state, loaded with it, active while open (`Pack.active`); removed afterwards."""
    with Pack(model, len(states)) as pack, pack.active(states) as names:
        yield names


def suggested(model: nn.Module, cfg: RunConfig, trains: Sequence[Sequence[Item]]) -> int:
    """How many adapters to pack when `pack` is not set: one on a CPU (already compute-bound at batch 4, so packing
    does not pay), under FSDP, on a 4-bit base (its layers are not plain linear ones) and for kinds that do not pack;
    on a GPU all of them (`trains`: each one's training
    items), up to what half the available device memory holds by `memory`'s estimate of a training step. A base
    model with dropout trains one at a time (`base_dropout`)."""
    device = next(model.parameters()).device
    alone = cfg.runtime.fsdp or cfg.runtime.quantization != "none" or pack_refusal(cfg.adapter) or base_dropout(model)
    if device.type != "cuda" or alone or not trains:
        return 1
    width = max(len(i.prompt) + len(i.answer) for items in trains for i in items)
    keep = max(len(i.answer) for items in trains for i in items)
    per_lane = memory.peak_bytes(memory.Shape.of(model), cfg.train.train_batch_size, width, keep, True)
    return max(1, min(len(trains), memory.available_bytes(device) // 2 // per_lane))
