"""Sweeps: one YAML file expands a grid of conditions × tuned hyperparameters into runs.

Runs that differ only in learning rate form a cell, run together on one loaded model with their adapters trained in
packs; runs share cached teacher targets (keyed by model, data, seed and prompts, not by learning rate), skip what is
finished and resume what is not, because every (seed, method) row is written atomically as it completes.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ia2 import config
from ia2.config import RunConfig
from ia2.errors import IA2Error
from ia2.model import distributed
from ia2.paths import check_output, write_json
from ia2.reporting import preregistered
from ia2.run import outdir

log = logging.getLogger(__name__)

SELECT = ("dev_loss", "dev_accuracy", "test_accuracy")


@dataclass(frozen=True)
class Sweep:
    """Grids of conditions (each its own result) and tuned hyperparameters (chosen on dev data per condition).

    Axes and fixed settings name settings as a run file does (`lr`, `train.lr`, or sections); tuned axes are kept
    by their paths. `grid` in the file is one mapping of axes or a list of them (their union, e.g. one model at
    more N than another); a grid's `methods` axis (each value a list of methods) overrides the file's methods for
    its runs (controls run in one condition only). `tests` pre-registers the report's primary and secondary tests
    (`ia2.reporting.preregistered`).
    """

    source: Path
    out: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: list[dict[str, list]] = field(default_factory=lambda: [{}])
    tune: dict[str, list] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    select: str = "dev_loss"
    tests: dict[str, Any] = field(default_factory=dict)

    def points(self) -> list[dict[str, tuple[Any, str]]]:
        """Every combination of grid and tuned values, as {path: (value, origin)}, conditions varying slowest; a list
        of grids is their union, in order. A value that is a mapping sets several settings together (e.g. a task
        with its out-of-distribution sets)."""
        out = []
        for g, grid in enumerate(self.grid):
            where = f"grid[{g}]" if len(self.grid) > 1 else "grid"
            axes = [(where, k, v) for k, v in grid.items()] + [("tune", k, v) for k, v in self.tune.items()]
            for values in itertools.product(*(values for _, _, values in axes)):
                point: dict[str, tuple[Any, str]] = {}
                for (block, axis, _), value in zip(axes, values):
                    given, inside = (value, f"{block}.{axis}") if isinstance(value, dict) else ({axis: value}, block)
                    point.update(config.flatten(given, str(self.source), inside))
                out.append(point)
        return out

    def configs(self) -> list[RunConfig]:
        """One RunConfig per distinct point, ordered by N first so that every task has results at small N early. A
        point listed twice (overlapping grids) is one run: its rows must not count twice in the report's tests."""
        fixed = config.flatten(self.fixed, str(self.source), "fixed")
        listed = {
            "methods": (list(self.methods), f"{self.source}: methods"),
            "seeds": (list(self.seeds), f"{self.source}: seeds"),
        }
        out: dict[str, RunConfig] = {}
        for cfg in (config.build({**fixed, **listed, **point}) for point in self.points()):
            same = out.setdefault(config.key(cfg), cfg)
            if same.methods != cfg.methods:
                raise IA2Error(
                    f"{self.source}: one configuration is listed twice with different methods "
                    f"({', '.join(same.methods)} and {', '.join(cfg.methods)}): give its methods once"
                )
        return sorted(out.values(), key=lambda c: c.data.n_train)

    def tuned_paths(self) -> list[str]:
        """The paths of the tuned settings."""
        return [config.resolve(k, f"{self.source}: tune.{k}") for k in self.tune]


def _grids(path: Path, data: dict) -> list[dict]:
    """The file's `grid` as a list of mappings (one mapping, a list of them, or none)."""
    grid = data.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    for g in grids:
        if not isinstance(g, dict):
            raise IA2Error(f"{path}: grid must be a mapping of settings or a list of them, got {grid!r}")
    return grids


def _check_blocks(path: Path, data: dict) -> None:
    """`grid` (each one), `tune` and `fixed` are mappings; grid and tune axes non-empty lists, a tuned value one
    setting's (a mapping would tune settings the selection does not record); seeds only at the top, methods at the
    top or as a grid axis."""
    blocks = [("grid", g) for g in _grids(path, data)] + [(k, data.get(k) or {}) for k in ("tune", "fixed")]
    for key, block in blocks:
        if not isinstance(block, dict):
            raise IA2Error(f"{path}: {key} must be a mapping of settings, got {block!r}")
        if "seeds" in block or ("methods" in block and key != "grid"):
            raise IA2Error(
                f"{path}: {key}: seeds are given at the top of a sweep file, and methods there or as a grid axis"
            )
        if key == "fixed":
            continue
        for axis, values in block.items():
            if not isinstance(values, list) or not values:
                raise IA2Error(f"{path}: {key}.{axis} must be a non-empty list")
            if key == "tune" and any(isinstance(v, dict) for v in values):
                raise IA2Error(f"{path}: tune.{axis}: a tuned axis takes values of its one setting, not mappings")


def _check_overlap(sweep: Sweep) -> None:
    """A setting is fixed, a grid axis or tuned, not two of these: one would override the other silently."""
    source = str(sweep.source)
    axes = {
        config.resolve(axis, f"{source}: grid.{axis}")
        for grid in sweep.grid
        for axis, values in grid.items()
        if not any(isinstance(v, dict) for v in values)
    }
    blocks = [
        ("fixed", set(config.flatten(sweep.fixed, source, "fixed"))),
        ("grid", axes),
        ("tune", set(sweep.tuned_paths())),
    ]
    for (one, these), (other, those) in itertools.combinations(blocks, 2):
        both = sorted(these & those)
        if both:
            raise IA2Error(f"{source}: {both[0]} is both in {one} and in {other}; give it in one of them")


def load(path: Path, out: Path | None = None) -> Sweep:
    """Read a sweep YAML file; `out` overrides its output folder."""
    data = config.load_yaml(path)
    known = {f.name for f in fields(Sweep)} - {"source"}
    for key in data:
        if key not in known:
            raise IA2Error(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key in ("methods", "seeds"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise IA2Error(f"{path}: field {key!r} must be a non-empty list")
    _check_blocks(path, data)
    if data.get("select", "dev_loss") not in SELECT:
        raise IA2Error(f"{path}: field 'select' must be one of {', '.join(SELECT)}")
    target = out or Path(data.get("out", "runs/sweep"))
    sweep = Sweep(
        source=path,
        out=target,
        methods=tuple(data["methods"]),
        seeds=tuple(data["seeds"]),
        grid=_grids(path, data),
        tune=data.get("tune") or {},
        fixed=data.get("fixed") or {},
        select=data.get("select", "dev_loss"),
        tests=data.get("tests") or {},
    )
    _check_overlap(sweep)
    scaling = sorted(k for k, p in zip(sweep.tune, sweep.tuned_paths()) if p in {"train.w", "train.per_layer_norm"})
    if scaling and sweep.select == "dev_loss":
        raise IA2Error(
            f"{path}: tuning {scaling[0]} rescales the training loss, so dev losses are not comparable "
            "across its values: use select: dev_accuracy"
        )
    configs = sweep.configs()
    if sweep.tests:
        preregistered.parse(sweep.tests, sorted({m for c in configs for m in c.methods}), str(path))
    return sweep


def run_dir(out: Path, cfg: RunConfig) -> Path:
    """runs/<model>/<task>/n<N>/<config key>: readable, and unique per configuration."""
    clean = lambda s: str(s).replace("/", "_").replace(":", "_")  # noqa: E731
    return out / "runs" / clean(cfg.model) / clean(cfg.data.task) / f"n{cfg.data.n_train}" / config.key(cfg)


def finished(cfg: RunConfig, folder: Path) -> bool:
    """True when every (seed, method, evaluation set) row of the run is on disk."""
    rows = outdir.rows_dir(folder, cfg)
    names = [cfg.data.task, *cfg.data.eval_tasks]
    return all(
        outdir.read_intact(rows / outdir.row_file(s, m, e, cfg.data.task)) is not None
        for s in cfg.seeds
        for m in cfg.methods
        for e in names
    )


def spec(cfg: RunConfig, tuned: list[str]) -> dict:
    """What the report needs to know about a run: its full config, its key, the tuned values by path."""
    return {"config": config.to_dict(cfg), "key": config.key(cfg), "tuned": {p: config.get(cfg, p) for p in tuned}}


def cells(configs: list[RunConfig]) -> list[list[int]]:
    """The plan's runs (indices) grouped into cells, in plan order: runs that differ only in learning rate share one
    loaded model, their seeds' baselines and teacher targets, and train their adapters in packs (`run_cell`). A run
    that reports to trackers stays a cell of its own, as its trackers are named per run."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        alone = bool(cfg.runtime.report_to)
        groups.setdefault(
            f"run {i}" if alone else config.key(replace(cfg, train=replace(cfg.train, lr=0.0))), []
        ).append(i)
    return list(groups.values())


def units(configs: list[RunConfig]) -> list[list[int]]:
    """What --shard splits, in plan order: each configuration alone, except a cell packed with --pack > 1, which
    stays whole (its runs train together)."""
    out: list[list[int]] = []
    for cell in cells(configs):
        packed = (configs[cell[0]].runtime.pack or 1) > 1
        out += [cell] if packed else [[i] for i in cell]
    return out


def share(configs: list[RunConfig], shard: tuple[int, int]) -> list[int]:
    """The configurations (indices) shard (i, k) runs: every k-th unit from the i-th; a k larger than the number of
    units, which would leave a shard with nothing to do, is refused."""
    index, count = shard
    split = units(configs)
    if count > len(split):
        raise IA2Error(
            f"--shard {index}/{count}: the sweep has {len(split)} configuration{'s' * (len(split) != 1)} to split "
            f"(a cell packed with pack > 1 counts as one), so K must be at most {len(split)}"
        )
    return sorted(i for u, unit in enumerate(split) if u % count == index for i in unit)


def execute(sweep: Sweep, shard: tuple[int, int] = (0, 1)) -> list[Path]:
    """Run every configuration not yet finished, in order, a cell at a time; return the run folders.

    sweep.json, naming every run folder of the plan, is written first: the report reads exactly these runs, never
    a folder left by another plan (or by an earlier version, whose run keys differ). With shard (i, k) only every
    k-th configuration from the i-th runs (`share`), so k processes (or machines sharing the folder) can split a
    sweep; each writes only its own runs' rows.
    """
    from ia2.run.experiment import Member, run_cell

    check_output(sweep.out, folder=True)
    configs = sweep.configs()
    mine = set(share(configs, shard))
    folders = [run_dir(sweep.out, cfg) for cfg in configs]
    if distributed.is_main():
        plan = {k: v for k, v in asdict(sweep).items() if k not in ("out", "source")}
        write_json(sweep.out / "sweep.json", {**plan, "runs": [str(f.relative_to(sweep.out)) for f in folders]})
    for cell in cells(configs):
        members = []
        for i in [i for i in cell if i in mine]:
            cfg, folder = configs[i], folders[i]
            done = distributed.from_main(finished(cfg, folder))
            if distributed.is_main() and not (done and outdir.read_intact(folder / "spec.json") is not None):
                write_json(folder / "spec.json", spec(cfg, sweep.tuned_paths()))
            log.info("[%d/%d] %s %s", i + 1, len(configs), "done already:" if done else "running", folder)
            if not done:
                members.append(Member(cfg, folder))
        if members:
            run_cell(members)
    return folders


def dump_points(sweep: Sweep, shard: tuple[int, int] = (0, 1)) -> str:
    """The runs of the expanded grid that shard (i, k) runs as text, one a line (for --dry-run)."""
    lines = []
    configs = sweep.configs()
    for cfg in [configs[i] for i in share(configs, shard)]:
        changed = {
            k: v for k, v in config.flat(cfg).items() if k not in ("methods", "seeds") and v != config.default(k)
        }
        lines.append(f"{run_dir(sweep.out, cfg)}  " + json.dumps(changed, default=str))
    return "\n".join(lines)
