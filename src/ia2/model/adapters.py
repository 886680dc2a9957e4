"""Adapters through PEFT at run time: a seeded fresh adapter per run (its settings checked by
`ia2.config.adapter_kinds`), its PEFT-format save, unwrapping, and the bf16 merge of reference parity."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ia2.config.adapter_kinds import kinds_with, merges, normalise, peft_config
from ia2.errors import IA2Error
from ia2.paths import atomic_path

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel
    from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The base model without its adapter: LoRA and IA3 layers are removed; prompt learning never touched it."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    return model.get_base_model() if model.active_peft_config.is_prompt_learning else model.unload()


def _check_architecture(model: nn.Module, peft_type: str) -> None:
    """Prefix tuning feeds its virtual tokens as a key/value cache, taken only by full or sliding attention."""
    types = getattr(model.config.get_text_config(), "layer_types", None) or []
    other = sorted(set(types) - {"full_attention", "sliding_attention"})
    if peft_type == "PREFIX_TUNING" and other:
        raise IA2Error(
            f"prefix tuning needs a key/value cache in every layer; {type(model).__name__} also has "
            f"{', '.join(other)} layers"
        )


def fresh(model: nn.Module, spec: str | Mapping[str, Any], seed: int) -> PeftModel:
    """Wrap the base model (unwrapping any earlier adapter first) in a new adapter (a preset name or a PEFT config
    mapping, see `normalise`) initialised from `seed`."""
    spec = normalise(spec)
    peft_cfg = peft_config(spec)
    base = unwrap(model)
    _check_architecture(base, spec["peft_type"])
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    try:
        wrapped = get_peft_model(base, peft_cfg)
    except ValueError as exc:
        raise IA2Error(
            f"cannot add a {spec['peft_type']} adapter to {type(base).__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    wrapped.eval()
    return wrapped


def save(model: PeftModel, path: Path, base_model: str, files: Mapping[str, str]) -> None:
    """Save the adapter in PEFT format (loadable with PeftModel.from_pretrained), atomically, recording the base
    model as the user named it, with `files` (name → text: its model card README.md, ia2's own record) beside it."""
    peft_cfg = model.peft_config[model.active_adapter]
    resolved, peft_cfg.base_model_name_or_path = peft_cfg.base_model_name_or_path, base_model
    try:
        with atomic_path(path) as tmp:
            model.save_pretrained(tmp, save_embedding_layers=_targets_embeddings(peft_cfg))
            for name, text in files.items():
                (tmp / name).write_text(text)
    finally:
        peft_cfg.base_model_name_or_path = resolved


def _targets_embeddings(peft_cfg: PeftConfig) -> bool:
    """Whether the adapter adapts an embedding layer, whose weights are then saved with it: PEFT's "auto" decides so
    too, but first asks the hub whether the base's vocabulary was resized (ia2 never resizes it), on every save."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    targets = getattr(peft_cfg, "target_modules", None) or ()
    return any(name in targets for name in EMBEDDING_LAYER_NAMES)


def merged_bf16(model: PeftModel) -> nn.Module:
    """A bfloat16 copy of the model with its LoRA or IA3 adapter merged in: how the reference code evaluates (parity
    only: the merge rounds the small update onto the bf16 grid of the base weights, so it is not the trained model)."""
    kind = model.peft_config[model.active_adapter].peft_type.value
    if not merges(kind):
        raise IA2Error(f"only {kinds_with('merge')} adapters can be merged, not {kind}")
    import torch

    merged = copy.deepcopy(model).to(torch.bfloat16).merge_and_unload()
    return merged.eval()
