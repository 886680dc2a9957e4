"""Adapter settings: an adapter is any PEFT config as a mapping (presets for the paper's LoRA, IA3, prompt and
prefix tuning), checked by building its PEFT config, and what each kind of adapter allows, declared once per PEFT type
in `ia2.registry.ADAPTER_KINDS`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from ia2.errors import IA2Error
from ia2.registry import ADAPTER_KINDS

if TYPE_CHECKING:
    from peft import PeftConfig

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
class AdapterKind:
    """What a kind of adapter allows: merging into the base weights, FSDP sharding of the base model (the adapter
    stays whole), several adapters packed in one training pass (plain linear updates only), and virtual tokens
    prepended to the input (which shift positions and forbid a prefix cache)."""

    merge: bool
    fsdp: bool
    pack: bool
    virtual_tokens: bool


# The kinds tested here, by PEFT type.
ADAPTER_KINDS.register("LORA", AdapterKind(merge=True, fsdp=True, pack=True, virtual_tokens=False))
ADAPTER_KINDS.register("IA3", AdapterKind(merge=True, fsdp=True, pack=True, virtual_tokens=False))
ADAPTER_KINDS.register("PROMPT_TUNING", AdapterKind(merge=False, fsdp=False, pack=False, virtual_tokens=True))
ADAPTER_KINDS.register("PREFIX_TUNING", AdapterKind(merge=False, fsdp=False, pack=False, virtual_tokens=True))


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
    """Whether adapters of this PEFT type may be merged into the base weights (the declared kinds that allow it)."""
    return peft_type in ADAPTER_KINDS and ADAPTER_KINDS[peft_type].merge


def kinds_with(capability: str) -> str:
    """The declared kinds that allow `capability` (`merge`, `fsdp` or `pack`), as messages name them ("LORA and
    IA3"): read from the registry, so a kind declared in user code is named too."""
    names = [name for name, kind in ADAPTER_KINDS.items() if getattr(kind, capability)]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def kind_of(spec: Mapping[str, Any]) -> AdapterKind:
    """What an adapter mapping's kind allows: its declaration, or for an undeclared kind nothing but what PEFT says
    of virtual tokens (neither merged, sharded nor packed)."""
    if spec["peft_type"] in ADAPTER_KINDS:
        return ADAPTER_KINDS[spec["peft_type"]]
    return AdapterKind(merge=False, fsdp=False, pack=False, virtual_tokens=peft_config(spec).is_prompt_learning)


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


def pack_refusal(peft_cfg: Mapping) -> str | None:
    """Why adapters of this PEFT config mapping cannot be packed, or None: only plain adapters of the kinds declared
    packable (LoRA and IA3) on linear layers
    (no dropout, DoRA, LoRA bias, trained base biases or modules to save: per-row randomness or weights shared by
    every adapter, which the packed pass does not reproduce)."""
    kind = str(peft_cfg.get("peft_type"))
    if kind not in ADAPTER_KINDS or not ADAPTER_KINDS[kind].pack:
        return f"must be 1 for {kind} adapters (packing takes {kinds_with('pack')})"
    for name in ("lora_dropout", "use_dora", "lora_bias", "modules_to_save"):
        if peft_cfg.get(name):
            return f"must be 1 for adapters with {name} (packing takes plain {kinds_with('pack')})"
    if peft_cfg.get("bias", "none") != "none":
        return f"must be 1 for adapters that train biases (packing takes plain {kinds_with('pack')})"
    return None
