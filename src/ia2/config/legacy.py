"""Settings and recorded configs of ia2 0.1, read as today's: a renamed setting gets a one-line message naming its
new name, and a recorded flat config (results.json, spec.json) is mapped field by field onto today's sections."""

from __future__ import annotations

import json
from typing import Any

from ia2.config import adapter_kinds

# Names of earlier versions: a file that uses one gets a one-line message naming today's.
RENAMED = {
    "n": "n_train",
    "epochs": "max_epochs",
    "train.batch_size": "train_batch_size",
    "eval_batch_size": "dev_batch_size",
    "train.eval_batch_size": "dev_batch_size",
    "eval_task": "eval_tasks",
    "teacher": "teacher_mode",
}

# Flags of ia2 0.1, each answered with today's spelling.
OLD_FLAGS = {
    "--n": "--n-train",
    "--epochs": "--max-epochs",
    "--teacher": "--teacher-mode",
    "--eval-task": "--eval-tasks",
    "--eval-batch-size": "--dev-batch-size",
    "--keep-last": "--no-restore-best",
    "--lora-r": '--adapter \'{"peft_type": "LORA", "r": 16}\'',
    "--lora-alpha": '--adapter \'{"peft_type": "LORA", "lora_alpha": 16}\'',
    "--lora-targets": '--adapter \'{"peft_type": "LORA", "target_modules": ["q_proj"]}\'',
    "--ia3-feedforward": '--adapter \'{"peft_type": "IA3", "feedforward_modules": [...]}\'',
    "--num-virtual-tokens": '--adapter \'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8}\'',
}

# The adapter flags among them, as (peft_type, field): their hint carries the value given.
ADAPTER_FLAGS = {
    "--lora-r": ("LORA", "r"),
    "--lora-alpha": ("LORA", "lora_alpha"),
    "--lora-targets": ("LORA", "target_modules"),
    "--ia3-feedforward": ("IA3", "feedforward_modules"),
    "--num-virtual-tokens": ("PROMPT_TUNING", "num_virtual_tokens"),
}


def new_spelling(flag: str, value: str | None) -> str:
    """Today's spelling of a flag of ia2 0.1, with the value the user gave it where it goes into an adapter mapping."""
    if flag not in ADAPTER_FLAGS or not value:
        return OLD_FLAGS[flag]
    kind, name = ADAPTER_FLAGS[flag]
    typed = value.split(",") if name.endswith("modules") else int(value) if value.isdigit() else value
    return "--adapter '" + json.dumps({"peft_type": kind, name: typed}) + "'"


# Training settings of ia2 0.1 that are called otherwise now.
TRAIN_RENAMED = {"batch_size": "train_batch_size", "eval_batch_size": "dev_batch_size"}

# Where each field of the flat config of earlier versions (ia2 0.1) lives now.
_OLD_FLAT = {
    "n": "data.n_train",
    "task": "data.task",
    "n_dev": "data.n_dev",
    "n_test": "data.n_test",
    "eval_tasks": "data.eval_tasks",
    "labels": "data.labels",
    "parser": "data.parser",
    "max_new_tokens": "data.max_new_tokens",
    "answer_prefix": "data.answer_prefix",
    "unlabelled": "data.unlabelled",
    "data_seed": "data.data_seed",
    "k_max": "prompt.k_max",
    "icl_demos": "prompt.icl_demos",
    "permutations": "prompt.permutations",
    "chat": "prompt.chat",
    "site": "teacher.site",
    "layers": "teacher.layers",
    "teacher": "teacher.teacher_mode",
    "soft_top_k": "teacher.soft_top_k",
    "target_dtype": "teacher.target_dtype",
    "target_store": "teacher.target_store",
    "teacher_stop": "teacher.teacher_stop",
    "device": "runtime.device",
    "dtype": "runtime.dtype",
    "batch_size": "runtime.batch_size",
    "fsdp": "runtime.fsdp",
    "merge_bf16": "runtime.merge_bf16",
    "save_adapters": "runtime.save_adapters",
}


def upgrade(data: dict) -> dict:
    """A recorded config in today's nested form: configs written by ia2 0.1 (flat, `train.batch_size`, an adapter
    of kind/r/alpha/targets) are mapped field by field; today's pass through unchanged."""
    if "data" in data:
        return data
    out: dict[str, Any] = {"data": {}, "prompt": {}, "teacher": {}, "runtime": {}}
    for name, value in data.items():
        if name in _OLD_FLAT:
            head, _, tail = _OLD_FLAT[name].partition(".")
            out[head][tail] = value
        elif name == "train":
            out["train"] = {TRAIN_RENAMED.get(k, k): v for k, v in value.items()}
        elif name == "adapter":
            out["adapter"] = adapter_kinds.from_old(value)
        elif name in ("model", "methods", "seeds"):
            out[name] = value
    return out
