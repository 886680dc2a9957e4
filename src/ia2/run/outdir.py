"""A run's output folder: claimed for one configuration before anything loads, its rows keyed by the config, and
the files written when the run finishes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ia2 import config
from ia2.config import RunConfig
from ia2.errors import IA2Error
from ia2.model import distributed
from ia2.paths import check_output, write_json

log = logging.getLogger(__name__)
MARKER = "run.json"
# What a run writes into its folder; --overwrite removes these and nothing else.
ARTIFACTS = (
    MARKER,
    "rows",
    "adapters",
    "results.json",
    "results.md",
    "reliability.json",
    "reliability.png",
    "train_logs.json",
    "manifest.json",
    "trackers",
)


def read_intact(path: Path) -> dict | None:
    """A JSON object ia2 wrote, or None when it is missing or corrupt (truncated by a crash or a full disk, edited):
    a corrupt one is named in a warning and set aside as `<name>.corrupt` by the main process, to be recomputed."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    if distributed.is_main():
        aside = path.with_name(path.name + ".corrupt")
        log.warning("%s: corrupt, set aside as %s and recomputed", path, aside.name)
        path.replace(aside)
    return None


def recorded_keys(out: Path) -> set[str]:
    """The config keys of the runs a folder holds: its marker's, else (folders of ia2 0.1) results.json's and the
    row folders'. A marker alone (a run that failed before writing anything) holds no run."""
    marker = read_intact(out / MARKER)
    if marker is not None:
        wrote = any((out / name).exists() for name in ("rows", "adapters", "results.json"))
        return {marker.get("key", "?")} if wrote else set()
    keys = {p.name for p in (out / "rows").iterdir() if p.is_dir()} if (out / "rows").is_dir() else set()
    results = read_intact(out / "results.json")
    if results is not None:
        keys.add(results.get("config", {}).get("key", "?"))
    return keys


def _difference(out: Path, cfg: RunConfig) -> str:
    """The settings in which the folder's recorded run differs from `cfg`, as `path: old → new`; those that a run
    may change in its folder (methods, seeds, fsdp) are left out."""
    marker = read_intact(out / MARKER)
    if marker is None:
        return "recorded by an earlier ia2"
    old = config.flat(config.from_dict(marker["config"]))
    new = config.flat(cfg)
    paths = sorted((old.keys() | new.keys()) - set(config.NOT_IN_KEY))
    changed = [f"{p}: {old.get(p)} → {new.get(p)}" for p in paths if old.get(p) != new.get(p)]
    return "; ".join(changed) or "same settings, another ia2 version"


def claim(out: Path, cfg: RunConfig, overwrite: bool = False) -> None:
    """Make sure `out` can take this run before anything loads: a writable folder holding no run of another
    configuration (with `overwrite`, an earlier run's files are removed first); record the config there."""
    check_output(out, folder=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IA2Error(f"{out}: cannot write the output folder ({exc.strerror})") from None
    check_output(out, folder=True)
    others = recorded_keys(out) - {config.key(cfg)}
    if others and not overwrite:
        raise IA2Error(
            f"{out} holds a run of another configuration ({_difference(out, cfg)}): choose another "
            "output folder, or pass --overwrite to replace it"
        )
    if distributed.is_main():
        if others:
            for name in ARTIFACTS:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        write_json(out / MARKER, {"key": config.key(cfg), "config": config.to_dict(cfg)})
    distributed.barrier()


def row_file(seed: int, method: str, eval_task: str, own_task: str) -> str:
    """Where a row lives under rows/<key>/: `seed<S>/<method>.json`, with `@<eval task>` for an OOD evaluation."""
    suffix = "" if eval_task == own_task else "@" + eval_task.replace("/", "_").replace(":", "_")
    return f"seed{seed}/{method}{suffix}.json"


def rows_dir(out: Path, cfg: RunConfig) -> Path:
    """The folder of a configuration's rows."""
    return out / "rows" / config.key(cfg)
