"""`ia2 export`: a saved adapter merged into its base model's weights, as a plain model folder that
`AutoModelForCausalLM.from_pretrained` loads alone (for serving engines that take whole models)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from . import adapters, models
from .errors import IA2Error
from .paths import atomic_path

DTYPES = ("float32", "bfloat16", "float16")


def adapter_config(adapter: Path) -> dict:
    """A saved adapter's PEFT config, or one line saying why the folder is not one."""
    if not adapter.is_dir():
        raise IA2Error(f"{adapter}: no such adapter folder")
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise IA2Error(f"{adapter}: not a saved adapter (no adapter_config.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IA2Error(f"{path}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not data.get("peft_type") or not data.get("base_model_name_or_path"):
        raise IA2Error(f"{path}: fields 'peft_type' and 'base_model_name_or_path' are required")
    return data


def merged(adapter: Path, out: Path, dtype: str = "float32") -> Path:
    """Merge the adapter into its base model (as the adapter names it) in fp32, cast to `dtype`, and write the
    model and tokenizer to `out` atomically; LoRA and IA3 only (prompt-learning adapters are served unmerged)."""
    if dtype not in DTYPES:
        raise IA2Error(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    spec = adapter_config(adapter)
    kind = spec["peft_type"]
    if kind not in adapters.CAPABILITIES or not adapters.CAPABILITIES[kind].merge:
        raise IA2Error(f"{adapter}: a {kind} adapter cannot be merged into the weights; serve it unmerged")
    if out.exists():
        raise IA2Error(f"{out}: already exists; export into a new folder")
    base, tokenizer = models.load(spec["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(getattr(torch, dtype))
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
