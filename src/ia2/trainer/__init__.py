"""IA2 inside the Hugging Face training stack: `IA2Config` (the usual training arguments plus IA2's settings under
their ia2 names) and `IA2Trainer` (a `transformers.Trainer` that trains IA2, SFT or IA2 → SFT on a PEFT model), for
scripts that already train with transformers or TRL and their launchers, callbacks and trackers."""

from ia2.trainer.arguments import IA2Config
from ia2.trainer.trainer import IA2Trainer

__all__ = ["IA2Config", "IA2Trainer"]
