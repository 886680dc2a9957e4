"""Sweeps: one YAML file expands a grid of conditions × tuned hyperparameters into runs.

Runs share cached teacher targets (keyed by model, data, seed and prompts, not by learning rate), skip what is
finished and resume what is not, because every (seed, method) row is written atomically as it completes.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import distributed
from .adapters import AdapterConfig
from .errors import IA2Error
from .experiment import RunConfig, changed, row_file, run
from .paths import write_json
from .train import TrainConfig

log = logging.getLogger(__name__)

ALIASES = {"lr": "train.lr", "w": "train.w", "epochs": "train.max_epochs", "adapter": "adapter.kind"}
NESTED = {"train": TrainConfig, "adapter": AdapterConfig}
SELECT = ("dev_loss", "dev_accuracy", "test_accuracy")


@dataclass(frozen=True)
class Sweep:
    """A grid of conditions (each its own result) and tuned hyperparameters (chosen on dev data per condition)."""

    out: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: dict[str, list] = field(default_factory=dict)
    tune: dict[str, list] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    select: str = "dev_loss"

    def points(self) -> list[dict[str, Any]]:
        """Every combination of grid and tuned values, as {field: value}, conditions varying slowest. A value that is a
        mapping sets several fields together (e.g. a task with its out-of-distribution evaluation sets)."""
        axes = {**self.grid, **self.tune}
        out = []
        for values in itertools.product(*axes.values()):
            point: dict[str, Any] = {}
            for axis, value in zip(axes, values):
                point.update(value if isinstance(value, dict) else {axis: value})
            out.append(point)
        return out

    def configs(self) -> list[RunConfig]:
        """One RunConfig per point, ordered by N first so that every task has results at small N early."""
        out = [build_config(self.fixed, point, self.methods, self.seeds) for point in self.points()]
        return sorted(out, key=lambda c: c.n)


def _dotted(name: str) -> str:
    return ALIASES.get(name, name)


def build_config(fixed: dict[str, Any], point: dict[str, Any], methods: tuple[str, ...], seeds: tuple[int, ...]) -> RunConfig:
    """A validated RunConfig from fixed settings (nested dicts or dotted keys) overridden by one grid point."""
    flat = {**_flatten(fixed), **{_dotted(k): v for k, v in point.items()}, "methods": methods, "seeds": seeds}
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in NESTED}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        value = tuple(value) if isinstance(value, list) else value
        if tail and head in NESTED:
            _check_field(NESTED[head], tail, key)
            nested[head][tail] = value
        else:
            _check_field(RunConfig, key, key)
            top[key] = value
    cfg = RunConfig(**top, **{name: cls(**nested[name]) for name, cls in NESTED.items()})
    cfg.validate()
    return cfg


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key in NESTED:
            out.update(_flatten(value, f"{key}."))
        else:
            out[prefix + key if prefix else _dotted(key)] = value
    return out


def _check_field(cls: type, name: str, shown: str) -> None:
    known = {f.name for f in fields(cls)}
    if name not in known:
        raise IA2Error(f"sweep setting {shown!r} is not a field of {cls.__name__} (known: {', '.join(sorted(known))})")


def load(path: Path, out: Path | None = None) -> Sweep:
    """Read a sweep YAML file; `out` overrides its output folder."""
    if not path.is_file():
        raise IA2Error(f"{path}: no such sweep file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise IA2Error(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    known = {f.name for f in fields(Sweep)}
    for key in data:
        if key not in known:
            raise IA2Error(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key in ("methods", "seeds"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise IA2Error(f"{path}: field {key!r} must be a non-empty list")
    for key in ("grid", "tune"):
        for axis, values in (data.get(key) or {}).items():
            if not isinstance(values, list) or not values:
                raise IA2Error(f"{path}: {key}.{axis} must be a non-empty list")
    if data.get("select", "dev_loss") not in SELECT:
        raise IA2Error(f"{path}: field 'select' must be one of {', '.join(SELECT)}")
    scaling = sorted(k for k in data.get("tune") or {} if _dotted(k) in {"train.w", "train.per_layer_norm"})
    if scaling and data.get("select", "dev_loss") == "dev_loss":
        raise IA2Error(f"{path}: tuning {scaling[0]} rescales the training loss, so dev losses are not comparable "
                       "across its values: use select: dev_accuracy")
    target = out or Path(data.get("out", "runs/sweep"))
    sweep = Sweep(out=target, methods=tuple(data["methods"]), seeds=tuple(data["seeds"]), grid=data.get("grid") or {},
                  tune={_dotted(k): v for k, v in (data.get("tune") or {}).items()}, fixed=data.get("fixed") or {},
                  select=data.get("select", "dev_loss"))
    sweep.configs()
    return sweep


def run_dir(out: Path, cfg: RunConfig) -> Path:
    """runs/<model>/<task>/n<N>/<config key>: readable, and unique per configuration."""
    clean = lambda s: str(s).replace("/", "_").replace(":", "_")  # noqa: E731
    return out / "runs" / clean(cfg.model) / clean(cfg.task) / f"n{cfg.n}" / cfg.key()


def finished(cfg: RunConfig, folder: Path) -> bool:
    """True when every (seed, method, evaluation set) row of the run is on disk."""
    rows = folder / "rows" / cfg.key()
    names = [cfg.task, *cfg.eval_tasks]
    return all((rows / row_file(s, m, e, cfg.task)).exists() for s in cfg.seeds for m in cfg.methods for e in names)


def spec(cfg: RunConfig, tuned: list[str]) -> dict:
    """What the report needs to know about a run: its full config, what differs from defaults, the tuned values."""
    flat = _flatten(changed(cfg))
    return {"config": asdict(cfg), "key": cfg.key(), "tuned": {k: flat.get(k, _default(k)) for k in tuned}}


def _default(dotted: str) -> Any:
    head, _, tail = dotted.partition(".")
    obj = NESTED[head]() if tail else RunConfig("", "", ())
    return getattr(obj, tail or head)


def execute(sweep: Sweep, shard: tuple[int, int] = (0, 1)) -> list[Path]:
    """Run every configuration not yet finished, in order; return the run folders.

    With shard (i, k) only every k-th configuration starting at i runs, so k processes (or machines sharing the
    folder) can split a sweep; each writes only its own runs' rows.
    """
    folders = []
    configs = sweep.configs()
    index, count = shard
    for i, cfg in enumerate(configs, start=1):
        folder = run_dir(sweep.out, cfg)
        folders.append(folder)
        if (i - 1) % count != index:
            continue
        done = distributed.from_main(finished(cfg, folder))
        if distributed.is_main() and not (done and (folder / "spec.json").exists()):
            write_json(folder / "spec.json", spec(cfg, list(sweep.tune)))
        if done:
            log.info("[%d/%d] done already: %s", i, len(configs), folder)
            continue
        log.info("[%d/%d] running %s", i, len(configs), folder)
        run(cfg, folder)
    if distributed.is_main():
        write_json(sweep.out / "sweep.json", {**{k: v for k, v in asdict(sweep).items() if k != "out"},
                                              "runs": [str(f.relative_to(sweep.out)) for f in folders]})
    return folders


def dump_points(sweep: Sweep) -> str:
    """The expanded grid as text, one run per line (for --dry-run)."""
    lines = []
    for cfg in sweep.configs():
        lines.append(f"{run_dir(sweep.out, cfg)}  " + json.dumps({k: v for k, v in _flatten(changed(cfg)).items()
                                                                  if k not in ("methods", "seeds")}, default=str))
    return "\n".join(lines)
