"""A saved adapter: its PEFT config and ia2's record of it, and the adapter loaded on its base model, checked to be
the base it was trained on, wherever that base is loaded from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ia2.errors import IA2Error
from ia2.run.card import RECORD

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase


def _read_json(path: Path) -> object:
    """A JSON file's content, or one line naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IA2Error(f"{path}: malformed JSON ({exc.msg})") from None


def adapter_config(adapter: Path) -> dict:
    """A saved adapter's PEFT config, or one line saying why the folder is not one."""
    if not adapter.is_dir():
        raise IA2Error(f"{adapter}: no such adapter folder")
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise IA2Error(f"{adapter}: not a saved adapter (no adapter_config.json)")
    data = _read_json(path)
    if not isinstance(data, dict) or not data.get("peft_type") or not data.get("base_model_name_or_path"):
        raise IA2Error(f"{path}: fields 'peft_type' and 'base_model_name_or_path' are required")
    return data


def load_record(adapter: Path) -> dict:
    """A saved ia2 adapter's record (ia2.json), or one line saying why the folder is not one."""
    if not adapter.is_dir():
        raise IA2Error(f"{adapter}: no such adapter folder (to predict with a model alone, give --task)")
    adapter_config(adapter)
    path = adapter / RECORD
    if not path.is_file():
        raise IA2Error(f"{adapter}: not an ia2 adapter (no {RECORD}; adapters saved by ia2 0.2 and later have one)")
    record = _read_json(path)
    missing = [k for k in ("base_model", "base_fingerprint", "task", "chat", "train_examples") if k not in record]
    if missing:
        raise IA2Error(f"{path}: field {missing[0]!r} missing (saved by an earlier ia2: retrain the adapter)")
    if record.get("diverged"):
        log.warning(
            "%s: its training diverged (%s); kept by --on-divergence record, not to be used as trained",
            adapter,
            record["diverged"],
        )
    return record


def on_base(adapter: Path, record: dict, base_model: str | None = None) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """A saved adapter on its base model (from `base_model` when given, checked to have the same weights)."""
    import torch
    from peft import PeftModel

    from ia2.model import loading
    from ia2.teacher.targets import model_fingerprint

    named = base_model or record["base_model"]
    base, tokenizer = loading.load(named, getattr(torch, record.get("dtype", "float32")), loading.device("auto"))
    found = model_fingerprint(base)
    if found != record["base_fingerprint"]:
        raise IA2Error(
            f"{named}: not the base model {adapter} was trained on (weights fingerprint {found}, the adapter's "
            f"{record['base_fingerprint']})"
        )
    return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer
