"""Training metrics to the usual trackers, through accelerate's integrations (TensorBoard, Weights & Biases, MLflow,
Trackio): per-step training loss and learning rate, dev losses, and each method's final metrics. Off unless asked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from . import config, distributed
from .config import RunConfig

# A reporter takes {name: value} at a step; `None` where nothing is tracked.
Reporter = Callable[[dict[str, float], int], None]


class Tracking:
    """The trackers of one run (or one trained adapter): file-based ones log under `folder/<name>`, and the run's
    settings are recorded as its hyperparameters."""

    def __init__(self, cfg: RunConfig, folder: Path, name: str) -> None:
        self._accelerator = Accelerator(log_with=list(cfg.runtime.report_to), project_dir=str(folder))
        settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.flat(cfg).items()}
        self._accelerator.init_trackers(name, config=settings)

    def reporter(self, prefix: str) -> Reporter:
        """A reporter that logs every value under `prefix/` (e.g. `seed0/ia2:icl/train_loss`)."""
        return lambda values, step: self._accelerator.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def finish(self) -> None:
        self._accelerator.end_training()


def open_tracking(cfg: RunConfig, folder: Path, name: str) -> Tracking | None:
    """The trackers `report_to` names (None for none), on the main process only: it alone reports."""
    return Tracking(cfg, folder, name) if cfg.runtime.report_to and distributed.is_main() else None
