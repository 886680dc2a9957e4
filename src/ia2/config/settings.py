"""The run's settings: one typed, nested configuration, the single source of every setting's name, default, help and
check. CLI flags, YAML run and sweep files, results.json and error messages all derive from it.

A setting has one name, its field name (`lr`), unique across the sections it is grouped in (`train.lr`): the flag is
`--lr`, a YAML file may write `lr`, `train.lr` or `train: {lr: ...}`. An error names the setting as the user wrote it.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ia2.config import adapter_kinds
from ia2.config.legacy import RENAMED, upgrade
from ia2.config.sections import (
    RunConfig,
)
from ia2.config.values import Quoted, coerce
from ia2.errors import IA2Error


class SettingError(IA2Error):
    """A setting's value that cannot run; `path` is its dotted path, rendered as the user wrote it by `build`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{flag(path)} {reason}")
        self.path, self.reason = path, reason


SECTIONS = ("data", "prompt", "teacher", "train", "runtime")
NOT_IN_KEY = (
    "methods",
    "seeds",
    "train.on_divergence",
    "runtime.fsdp",
    "runtime.pack",
    "runtime.compile",
    "runtime.activation_checkpointing",
    "runtime.save_adapters",
    "runtime.report_to",
)
REQUIRED = ("model", "data.task")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_classes() -> dict[str, type]:
    return {name: _hints(RunConfig)[name] for name in SECTIONS}


@cache
def paths() -> dict[str, Field]:
    """Every setting by dotted path (`model`, `train.lr`), in declaration order."""
    out = {}
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            out.update({f"{f.name}.{g.name}": g for g in fields(_section_classes()[f.name])})
        else:
            out[f.name] = f
    return out


@cache
def leaves() -> dict[str, str]:
    """Each setting's name (its field name) to its path; names are unique across sections."""
    out: dict[str, str] = {}
    for path in paths():
        name = path.rpartition(".")[2]
        if name in out:
            raise AssertionError(f"setting name {name!r} is used twice: {out[name]} and {path}")
        out[name] = path
    return out


def flag(path: str) -> str:
    """The command-line flag of a setting."""
    return "--" + path.rpartition(".")[2].replace("_", "-")


def annotation(path: str) -> Any:
    """The declared type of a setting."""
    head, _, tail = path.partition(".")
    return _hints(_section_classes()[head])[tail] if tail else _hints(RunConfig)[head]


def default(path: str) -> Any:
    """A setting's default ("" for the required ones)."""
    f = paths()[path]
    return f.default_factory() if f.default_factory is not MISSING else f.default


def resolve(key: str, shown: str) -> str:
    """The path of a setting written as `key` (its name or its dotted path); `shown` is how to name it in errors."""
    if key in paths():
        return key
    if key in leaves():
        return leaves()[key]
    if key in RENAMED:
        raise IA2Error(f"{shown}: setting {key!r} is now called {RENAMED[key]!r}")
    if key.startswith("adapter."):
        raise IA2Error(
            f"{shown}: adapter settings are now a PEFT config: write `adapter: ia3` (a preset) or "
            "`adapter: {peft_type: LORA, r: 16}`"
        )
    raise IA2Error(f"{shown}: unknown setting {key!r} (known: {', '.join(leaves())})")


def flatten(values: Mapping[str, Any], where: str, block: str = "") -> dict[str, tuple[Any, str]]:
    """Settings from a YAML mapping (sections, dotted paths or names) as {path: (value, origin)}; `where` names the
    file and `block` the mapping inside it (`fixed`), so that an error names a setting as `FILE: fixed.train.lr`
    (or, from Python, as the keyword was written)."""
    out: dict[str, tuple[Any, str]] = {}
    for key, value in values.items():
        key = str(key)
        shown = f"{where}: {block + '.' if block else ''}{key}" if where else key
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                if key in RENAMED:
                    raise IA2Error(f"{shown}: setting {key!r} is now called {RENAMED[key]!r}")
                raise IA2Error(f"{shown}: expected a mapping of {key} settings, got {value!r}")
            for inner, item in value.items():
                dotted = f"{key}.{inner}"
                path = resolve(dotted if dotted in paths() or dotted in RENAMED else str(inner), f"{shown}.{inner}")
                if not path.startswith(key + "."):
                    raise IA2Error(f"{shown}.{inner}: {inner!r} is a setting of {path.partition('.')[0]}, not {key}")
                out[path] = (item, f"{shown}.{inner}")
        else:
            out[resolve(key, shown)] = (value, shown)
    return out


def build(given: Mapping[str, tuple[Any, str]], base: RunConfig | None = None) -> RunConfig:
    """A validated RunConfig from {path: (value, origin)} over `base` (default: the defaults); errors name the
    setting as its origin wrote it (an unset one by its flag)."""
    shown = {path: origin for path, (_, origin) in given.items()}
    values = {path: coerce(annotation(path), value, origin) for path, (value, origin) in given.items()}
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for path, value in values.items():
        head, _, tail = path.partition(".")
        (sections[head] if tail else top)[tail or head] = value
    start = base or RunConfig()
    cfg = replace(start, **top, **{name: replace(getattr(start, name), **sections[name]) for name in SECTIONS})
    for required in REQUIRED:
        if not get(cfg, required):
            raise IA2Error(f"{shown.get(required, flag(required))} is required")
    try:
        validate(cfg)
    except SettingError as exc:
        raise IA2Error(f"{shown.get(exc.path, flag(exc.path))} {exc.reason}") from None
    return cfg


def make(model: str, task: str, **settings: Any) -> RunConfig:
    """A validated RunConfig from Python: settings by name (`lr=3e-4`, `n_train=4`), as a YAML file names them."""
    given = {**flatten(settings, ""), "model": (model, "model"), "data.task": (task, "task")}
    return build(given)


def get(cfg: RunConfig, path: str) -> Any:
    """A setting's value by path."""
    head, _, tail = path.partition(".")
    return getattr(getattr(cfg, head), tail) if tail else getattr(cfg, head)


def validate(cfg: RunConfig) -> None:
    """Reject settings that cannot run: each setting's declared choices and least value, then combinations."""
    for path, f in paths().items():
        value, meta = get(cfg, path), f.metadata
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        for item in value if isinstance(value, tuple) else (value,):
            if choices and item is not None and item not in choices:
                raise SettingError(path, f"must be one of {', '.join(map(str, choices))}, got {item!r}")
            if meta["least"] is not None and isinstance(item, (int, float)) and item < meta["least"]:
                raise SettingError(path, f"must be at least {meta['least']}, got {item}")
    _validate_combinations(cfg)


def _validate_combinations(cfg: RunConfig) -> None:
    """Checks that involve more than one setting, or a value's shape."""
    if not cfg.methods:
        raise SettingError("methods", "must name at least one method")
    if not cfg.seeds:
        raise SettingError("seeds", "must name at least one seed")
    repeated = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    if repeated:
        raise SettingError("seeds", f"names seed {repeated[0]} twice: each seed is one sample of mean ± std")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise SettingError("methods", f"names a method twice: {', '.join(cfg.methods)}")
    if not cfg.train.lr > 0:
        raise SettingError("train.lr", f"must be positive, got {cfg.train.lr}")
    if not 0 <= cfg.train.w <= 1:
        raise SettingError("train.w", f"must be in [0, 1], got {cfg.train.w}")
    layers = cfg.teacher.layers
    if layers is not None and (not layers or len(set(layers)) != len(layers) or min(layers) < 0):
        raise SettingError("teacher.layers", f"{list(layers)}: expected distinct layer indices from 0")
    if cfg.teacher.teacher_mode == "online" and (cfg.teacher.target_dtype, cfg.teacher.target_store) != (
        "float32",
        "file",
    ):
        raise SettingError(
            "teacher.teacher_mode", "online stores no activations: drop --target-dtype and --target-store"
        )
    capability = adapter_kinds.kind_of(cfg.adapter)
    if cfg.runtime.merge_bf16 and not capability.merge:
        raise SettingError(
            "runtime.merge_bf16",
            f"needs an adapter that merges ({adapter_kinds.kinds_with('merge')}), not {cfg.adapter['peft_type']}",
        )
    if cfg.runtime.fsdp and not capability.fsdp:
        raise SettingError(
            "runtime.fsdp",
            f"supports {adapter_kinds.kinds_with('fsdp')} adapters, not {cfg.adapter['peft_type']}"
            + (" (its virtual tokens are embedded outside the sharded model)" if capability.virtual_tokens else ""),
        )
    if cfg.runtime.fsdp and cfg.runtime.merge_bf16:
        raise SettingError(
            "runtime.merge_bf16", "merges the adapter into a whole copy of the model: drop it with --fsdp"
        )
    if cfg.runtime.fsdp and cfg.runtime.compile != "off":
        raise SettingError("runtime.compile", "must be off with --fsdp (compiling sharded layers is untested)")
    _check_quantization(cfg)
    if (cfg.runtime.pack or 1) > 1:
        if cfg.runtime.fsdp:
            raise SettingError("runtime.pack", "must be 1 with --fsdp (packing is untested there)")
        refused = adapter_kinds.pack_refusal(cfg.adapter)
        if refused:
            raise SettingError("runtime.pack", refused)


def _check_quantization(cfg: RunConfig) -> None:
    """A 4-bit base trains LoRA and IA3 adapters alone, unsharded and unmerged (what is tested)."""
    if cfg.runtime.quantization == "none":
        return
    for path, on in (("runtime.fsdp", cfg.runtime.fsdp), ("runtime.merge_bf16", cfg.runtime.merge_bf16)):
        if on:
            raise SettingError(path, f"must be off with quantization {cfg.runtime.quantization} (untested there)")
    if (cfg.runtime.pack or 1) > 1:
        raise SettingError("runtime.pack", f"must be 1 with quantization {cfg.runtime.quantization}")


def changed(obj: object) -> dict:
    """The fields of a (nested) dataclass whose values differ from their defaults; required fields always count."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            nested = changed(value)
            if nested:
                out[f.name] = nested
            continue
        start = f.default_factory() if f.default_factory is not MISSING else f.default
        if value != start or f.name in {p.rpartition(".")[2] for p in REQUIRED}:
            out[f.name] = value
    return out


def key(cfg: RunConfig) -> str:
    """Hash of the settings that differ from their defaults, minus those that change how the work is spread or what
    is kept or reported, not its results (methods, seeds, fsdp, save_adapters, report_to): rows written under one
    key are reused by a rerun, and a setting added later with a default keeps the keys of runs recorded before it
    (keys of ia2 0.1, which hashed a flat layout, are not today's)."""
    payload = changed(cfg)
    for path in NOT_IN_KEY:
        head, _, tail = path.partition(".")
        if tail:
            payload.get(head, {}).pop(tail, None)
            if payload.get(head) == {}:
                payload.pop(head)
        else:
            payload.pop(head, None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_dict(cfg: RunConfig) -> dict:
    """The config as JSON-ready nested sections (as results.json and spec.json record it)."""
    return asdict(cfg)


def from_dict(data: Mapping[str, Any], where: str = "config") -> RunConfig:
    """A RunConfig from its recorded form (`to_dict`), or from a config of an earlier version (`upgrade`)."""
    return build(flatten(upgrade(dict(data)), where))


def with_defaults(data: Mapping[str, Any]) -> dict:
    """A recorded config completed with today's defaults (runs recorded before a setting existed group with runs
    recorded after it), without validating it."""
    data = upgrade(dict(data))
    full = asdict(RunConfig())
    return {**full, **data, **{name: {**full[name], **data.get(name, {})} for name in SECTIONS}}


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping and keeping quoted text apart from numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            name = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if name in seen:
                raise _Repeated(line, f"key {name!r} given twice (first on line {seen[name]})")
            seen[name] = line
        return super().construct_mapping(node, deep)

    def construct_text(self, node: yaml.ScalarNode) -> str:
        text = self.construct_scalar(node)
        return Quoted(text) if node.style in ('"', "'") else text


_Loader.add_constructor("tag:yaml.org,2002:str", _Loader.construct_text)


class _Repeated(yaml.YAMLError):
    """A key given twice in one YAML mapping (which YAML would resolve silently, keeping the last)."""


def load_yaml(path: Path) -> dict:
    """A YAML mapping from a file, or one line naming the file (and the line of a key given twice)."""
    if path.is_dir():
        raise IA2Error(f"{path}: a folder, not a YAML file")
    if not path.is_file():
        raise IA2Error(f"{path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except _Repeated as exc:
        line, text = exc.args
        raise IA2Error(f"{path}:{line}: {text}") from None
    except yaml.YAMLError as exc:
        raise IA2Error(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise IA2Error(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def flat(cfg: RunConfig) -> dict[str, Any]:
    """Every setting by dotted path."""
    return {path: get(cfg, path) for path in paths()}
