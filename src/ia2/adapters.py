"""Adapters through PEFT: any PEFT config as a mapping (presets for the paper's LoRA, IA3, prompt and prefix tuning),
what each kind allows, a seeded fresh adapter per run, its PEFT-format save, and what left-padded batches need from
prompt-learning adapters."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import IA2Error
from .paths import atomic_path

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel
    from torch import nn

# The paper's adapters by name; a mapping with one of their peft_types starts from its preset.
PRESETS: dict[str, dict[str, Any]] = {
    "lora": {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "k_proj", "o_proj"],
        "lora_dropout": 0.0,
    },
    "ia3": {"peft_type": "IA3", "target_modules": ["q_proj", "k_proj", "o_proj"], "feedforward_modules": []},
    "prompt": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20},
    "prefix": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20},
}


@dataclass(frozen=True)
class Capability:
    """What a kind of adapter allows: merging into the base weights, FSDP sharding of the base model (the adapter
    stays whole), and virtual tokens prepended to the input (which shift positions and forbid a prefix cache)."""

    merge: bool
    fsdp: bool
    virtual_tokens: bool


# The kinds tested here, by PEFT type; any other kind is neither merged nor sharded, and has virtual tokens when it is
# a prompt-learning kind.
CAPABILITIES = {
    "LORA": Capability(True, True, False),
    "IA3": Capability(True, True, False),
    "PROMPT_TUNING": Capability(False, False, True),
    "PREFIX_TUNING": Capability(False, False, True),
}


def _config_class(peft_type: str) -> type[PeftConfig]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise IA2Error(
            f"unknown peft_type {peft_type!r}: a PEFT type such as LORA, IA3, LOHA, PROMPT_TUNING, "
            f"or a preset ({', '.join(PRESETS)})"
        )
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]


def normalise(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """An adapter as a PEFT config mapping: a preset name, a mapping with `peft_type` (a preset's fields fill what
    it does not give), or that mapping as JSON/YAML text; checked by building its PEFT config."""
    if isinstance(spec, str):
        text = spec.strip()
        if text in PRESETS:
            return dict(copy.deepcopy(PRESETS[text]))
        if not text.startswith("{"):
            raise IA2Error(f"unknown adapter {text!r}: a preset ({', '.join(PRESETS)}) or a PEFT config mapping")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError:
            raise IA2Error(f"adapter {text!r} is not a valid JSON or YAML mapping") from None
    if not isinstance(spec, Mapping) or "peft_type" not in spec:
        raise IA2Error(f"adapter {spec!r}: a PEFT config mapping needs a peft_type")
    peft_type = str(spec["peft_type"])
    preset = PRESETS.get(peft_type) or next((p for p in PRESETS.values() if p["peft_type"] == peft_type.upper()), {})
    out = {**copy.deepcopy(preset), **{k: v for k, v in spec.items() if k != "task_type"}}
    out["peft_type"] = preset.get("peft_type", peft_type.upper())
    _check(out)
    peft_config(out)
    return out


def _check(spec: Mapping[str, Any]) -> None:
    """Reject values PEFT only refuses once the adapter is built (or never): sizes below one, dropout outside
    [0, 1), no target modules."""
    kind = spec["peft_type"]
    for name in ("r", "num_virtual_tokens"):
        value = spec.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise IA2Error(f"{kind} adapter: {name} must be an integer of at least 1, got {value!r}")
    for name, value in spec.items():
        if name.endswith("dropout") and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise IA2Error(f"{kind} adapter: {name} must be in [0, 1), got {value!r}")
    targets = spec.get("target_modules", ["any"])
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise IA2Error(f"{kind} adapter: target_modules must be a module name or a list of them, got {targets!r}")
    if not targets:
        raise IA2Error(f"{kind} adapter: target_modules names no module")
    for name in ("lora_alpha", "alpha"):
        if name in spec and (isinstance(spec[name], bool) or not isinstance(spec[name], (int, float))):
            raise IA2Error(f"{kind} adapter: {name} must be a number, got {spec[name]!r}")


def peft_config(spec: Mapping[str, Any]) -> PeftConfig:
    """The PEFT config of an adapter mapping, for a causal LM."""
    options = {k: v for k, v in spec.items() if k != "peft_type"}
    try:
        return _config_class(spec["peft_type"])(**options, task_type="CAUSAL_LM")
    except (TypeError, ValueError) as exc:
        raise IA2Error(f"{spec['peft_type']} adapter: {str(exc).splitlines()[0]}") from None


def merges(peft_type: str) -> bool:
    """Whether adapters of this PEFT type may be merged into the base weights (the tested kinds that allow it)."""
    return peft_type in CAPABILITIES and CAPABILITIES[peft_type].merge


def capabilities(spec: Mapping[str, Any]) -> Capability:
    """What an adapter mapping's kind allows (see `Capability`)."""
    if spec["peft_type"] in CAPABILITIES:
        return CAPABILITIES[spec["peft_type"]]
    return Capability(merge=False, fsdp=False, virtual_tokens=peft_config(spec).is_prompt_learning)


def from_old(old: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter mapping of a config recorded by ia2 0.1 (kind, r, alpha, targets, dropout, feedforward,
    num_virtual_tokens)."""
    kind = old.get("kind", "lora")
    fields = {
        "lora": {"r": "r", "lora_alpha": "alpha", "target_modules": "targets", "lora_dropout": "dropout"},
        "ia3": {"target_modules": "targets", "feedforward_modules": "feedforward"},
        "prompt": {"num_virtual_tokens": "num_virtual_tokens"},
        "prefix": {"num_virtual_tokens": "num_virtual_tokens"},
    }[kind]
    given = {
        new: list(old[was]) if isinstance(old[was], (list, tuple)) else old[was]
        for new, was in fields.items()
        if was in old
    }
    return normalise({"peft_type": PRESETS[kind]["peft_type"], **given})


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
        raise IA2Error(f"only LoRA and IA3 adapters can be merged, not {kind}")
    import torch

    merged = copy.deepcopy(model).to(torch.bfloat16).merge_and_unload()
    return merged.eval()
