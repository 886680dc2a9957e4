"""Methods as declarations: the stages an adapter is trained through, each a loss and a label source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from .errors import IA2Error


@dataclass(frozen=True)
class Stage:
    """One training stage: `loss` is ce, ia2, joint or soft (KL to the teacher's next-token distribution);
    `labels` says whose answers are fed: gold or the ICL teacher's."""

    loss: Literal["ce", "ia2", "joint", "soft"]
    labels: Literal["gold", "icl"]


IA2 = Stage("ia2", "icl")
SFT = Stage("ce", "gold")

METHODS: dict[str, tuple[Stage, ...]] = {
    "zero-shot": (),
    "icl": (),
    "sft": (SFT,),
    "sft-icl": (Stage("ce", "icl"),),
    "soft": (Stage("soft", "icl"),),
    "ia2": (IA2,),
    "ia2-sft": (IA2, SFT),
    "ia2+sft": (Stage("joint", "icl"),),
    "sft-ia2": (SFT, IA2),
}

BASELINES = ("zero-shot", "icl")


def check_methods(names: Sequence[str]) -> None:
    """Reject an empty method list or an unknown method name."""
    for name in names:
        if name not in METHODS:
            raise IA2Error(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    if not names:
        raise IA2Error("no methods given")


def parse_methods(spec: str) -> list[str]:
    """Split a comma-separated method list, rejecting unknown names."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    check_methods(names)
    return names
