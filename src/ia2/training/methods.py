"""Methods as declarations, one line each: the stages an adapter is trained through (a loss and whose answers it
is fed), the name reports show, and the methods a report tests it against."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ia2.errors import IA2Error
from ia2.registry import LOSSES, METHODS


@dataclass(frozen=True)
class Stage:
    """One training stage: `loss` names a declared loss (`ia2.registry.LOSSES`); `labels` says whose answers are
    fed: gold, the ICL teacher's, or the placebo teacher's (the same queries and demonstrations, the demonstrations'
    answers shuffled among them). With `steps_of` (a method's name) the stage takes exactly the optimizer steps
    that method's stages took for the same adapter, without early stopping, and keeps its best dev state: a
    budget-matched control. `epochs_times` multiplies the run's epoch cap (a stage given room to converge)."""

    loss: str
    labels: Literal["gold", "icl", "placebo"]
    steps_of: str | None = None
    epochs_times: int = 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise IA2Error(f"stage loss {self.loss!r} is not declared: choose from {', '.join(LOSSES)}")


@dataclass(frozen=True)
class Method:
    """A method: `stages` to train (none for the baselines, which score the base model), `display` its name in
    reports, `tested_against` the methods a report pairs it with (paired tests, adapter overlaps)."""

    name: str
    display: str
    stages: tuple[Stage, ...] = ()
    tested_against: tuple[str, ...] = ()

    @property
    def baseline(self) -> bool:
        return not self.stages


IA2 = Stage("ia2", "icl")
IA2_LONG = Stage("ia2", "icl", epochs_times=4)
SFT = Stage("ce", "gold")

for _method in (
    Method("zero-shot", "w/o ICL"),
    Method("icl", "ICL"),
    Method("sft", "SFT only", (SFT,)),
    Method("sft-icl", "SFT (ICL labels)", (Stage("ce", "icl"),)),
    Method("soft", "SFT (soft)", (Stage("soft", "icl"),)),
    Method("ia2", "IA2 only", (IA2,), tested_against=("sft",)),
    Method("ia2-sft", "IA2 → SFT", (IA2, SFT), tested_against=("sft", "ia2", "sft-steps", "ia2-sft-placebo")),
    Method("ia2+sft", "IA2 + SFT", (Stage("joint", "icl"),)),
    Method("sft-ia2", "SFT → IA2", (SFT, IA2)),
    Method("sft-steps", "SFT (IA2 → SFT's steps)", (Stage("ce", "gold", steps_of="ia2-sft"),)),
    Method("ia2-sft-placebo", "IA2 (shuffled demos) → SFT", (Stage("ia2", "placebo"), SFT)),
    Method("ia2-long", "IA2 only (4× epochs)", (IA2_LONG,), tested_against=("ia2",)),
    Method("ia2-long-sft", "IA2 (4× epochs) → SFT", (IA2_LONG, SFT), tested_against=("sft", "ia2-sft")),
):
    METHODS.register(_method.name, _method)


def baselines() -> tuple[str, ...]:
    """The declared methods that train nothing (they score the base model)."""
    return tuple(name for name, m in METHODS.items() if m.baseline)


def needs_distribution(names: Iterable[str]) -> bool:
    """Whether a stage of these methods trains on the teacher's next-token distributions (its loss says so), which
    the teacher's collection must then keep."""
    return any(LOSSES[stage.loss].needs_distribution for name in names for stage in METHODS[name].stages)


def comparisons() -> tuple[tuple[str, str], ...]:
    """(method, what it is tested against) for every pair the declarations name, in declaration order."""
    return tuple((name, other) for name, m in METHODS.items() for other in m.tested_against)


# The recommended recipe against its first comparison: the paper's headline test.
RECOMMENDED = "ia2-sft"
HEADLINE = (RECOMMENDED, METHODS[RECOMMENDED].tested_against[0])


def display(name: str) -> str:
    """A method's name in reports (the name itself for one outside the table)."""
    return METHODS[name].display if name in METHODS else name
