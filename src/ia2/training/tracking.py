"""Training metrics to the usual trackers, through accelerate's integrations (TensorBoard, Weights & Biases, MLflow,
Trackio): per-step training loss and learning rate, dev losses, and each method's final metrics. Off unless asked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers

from ia2 import config
from ia2.config import RunConfig
from ia2.errors import IA2Error

# A reporter takes {name: value} at a step; `None` where nothing is tracked.
Reporter = Callable[[dict[str, float], int], None]


class Tracking:
    """The trackers of one run (or one trained adapter): file-based ones log under `folder/<name>`, and the run's
    settings are recorded as its hyperparameters."""

    def __init__(self, cfg: RunConfig, folder: Path, name: str) -> None:
        self._accelerator = Accelerator(log_with=list(cfg.runtime.report_to), project_dir=str(folder / name))
        settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.flat(cfg).items()}
        names = {"wandb": {"name": name}, "mlflow": {"run_name": name}}
        self._accelerator.init_trackers("ia2", config=settings, init_kwargs=names)
        self._step = 0

    def reporter(self, prefix: str) -> Reporter:
        """A reporter that logs every value under `prefix/` (e.g. `seed0/ia2:icl/train_loss`) at one step that only
        grows (trackers such as W&B drop earlier steps), the stage's own step logged beside as `prefix/step`."""

        def report(values: dict[str, float], step: int) -> None:
            self._step += 1
            logged = {f"{prefix}/{k}": v for k, v in {**values, "step": step}.items()}
            self._accelerator.log(logged, step=self._step)

        return report

    def finish(self) -> None:
        """Close the trackers (not the process group, which `Accelerator.end_training` would also leave)."""
        for tracker in self._accelerator.trackers:
            tracker.finish()


def check_available(cfg: RunConfig) -> None:
    """Refuse, before anything loads, a tracker whose package is not installed (accelerate would drop it silently)."""
    available = {getattr(tracker, "value", tracker) for tracker in get_available_trackers()}
    missing = [name for name in cfg.runtime.report_to if name not in available]
    if missing:
        raise IA2Error(f"--report-to {missing[0]}: its package is not installed (pip install {missing[0]})")
