"""What a run records about itself: config, seeds, library versions, data and model hashes."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ia2.model.handle import ModelHandle
    from ia2.run.context import RunSetup

PACKAGES = ("ia2", "torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "numpy", "tokenizers")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers."""
    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the ia2 source tree, when it is a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def manifest(setup: RunSetup, handle: ModelHandle) -> dict:
    """The run's provenance, written as manifest.json beside its results."""
    cfg, task = setup.cfg, setup.task
    return {
        "config": asdict(cfg),
        "seeds": list(cfg.seeds),
        "task": {
            "name": task.name,
            "source": task.source,
            "data_hash": task.data_hash(),
            "n_examples": len(task.examples),
            "labels": list(task.labels),
            "test_indices": setup.test,
        },
        "model": {"spec": cfg.model, "fingerprint": handle.fingerprint, "class": handle.model_class},
        "versions": versions(),
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
