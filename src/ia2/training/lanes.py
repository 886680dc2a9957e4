"""What one adapter trains on in a stage, and its way through it: the training items (prompt, answer, teacher
targets), a lane (one adapter's data, settings, seed and starting state), and its progress (data order, steps, dev
checks, early stopping, the best state and the stage's log)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from ia2.config import TrainConfig
from ia2.teacher.store import Stored
from ia2.training.methods import Stage
from ia2.training.tracking import Reporter


@dataclass(frozen=True)
class Item:
    """A training example for one stage: the prompt (no demos), the answer fed and, for IA2, its teacher activations;
    for the soft loss, the teacher's next-token log-probs [|answer|, k] of ids `top_ids` (None: all V tokens).

    Teacher tensors may be lazy `Stored` references, read when their batch is built. With the online teacher, `acts`
    is None and `icl_prompt` (the prompt with demonstrations) lets `batch_loss` compute them per batch.
    """

    prompt: list[int]
    answer: list[int]
    acts: torch.Tensor | Stored | None = None
    top_ids: torch.Tensor | Stored | None = None
    top_logp: torch.Tensor | Stored | None = None
    icl_prompt: list[int] | None = None


@dataclass(frozen=True)
class Lane:
    """One adapter to train on a stage, alone or packed with others: its training and dev items, its settings (its
    own learning rate and stopping), the seed of its data order, the state it starts from, its label and where its
    step and dev metrics go."""

    train: Sequence[Item]
    dev: Sequence[Item]
    cfg: TrainConfig
    seed: int
    state: Mapping[str, torch.Tensor]
    desc: str = "train"
    report: Reporter | None = None


class EpochOrder(Sampler[int]):
    """A fresh random order of n items at each epoch (each iteration), from one generator seeded once: a lane's data
    order, and IA2Trainer's, which so draws the same."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class Progress:
    """A lane's way through its stage: its data order, step, dev checks, best state and log."""

    def __init__(self, lane: Lane, first_dev: float) -> None:
        self.lane, cfg = lane, lane.cfg
        self.orders = EpochOrder(len(lane.train), lane.seed)
        self.order, self.start, self.epoch = list(self.orders), 0, 0
        self.step, self.stale, self.loss = 0, 0, math.nan
        self.best, self.best_state = first_dev, dict(lane.state)
        self.failure = None if math.isfinite(first_dev) else f"initial dev loss {first_dev}"
        self.history: list[dict] = [{"step": 0, "dev_loss": first_dev}]
        total = cfg.max_epochs * math.ceil(len(lane.train) / cfg.train_batch_size)
        self.limit = min(total, cfg.max_steps or total)
        self.report({"dev_loss": first_dev}, 0)

    def report(self, values: dict[str, float], step: int) -> None:
        if self.lane.report:
            self.lane.report(values, step)

    @property
    def done(self) -> bool:
        """Stopped early, at its step limit, or on a non-finite loss (nothing after it can be kept)."""
        return self.failure is not None or self.stale >= self.lane.cfg.patience or self.step >= self.limit

    def next_batch(self) -> list[Item]:
        """The next training batch, drawing a new order at each epoch's start."""
        if self.start >= len(self.order):
            self.order, self.start = list(self.orders), 0
            self.epoch += 1
        batch = [self.lane.train[i] for i in self.order[self.start : self.start + self.lane.cfg.train_batch_size]]
        self.start += self.lane.cfg.train_batch_size
        return batch

    def stepped(self) -> bool:
        """Count an optimizer step (its loss comes later, `took`); whether a dev check is due (every eval_every steps,
        and the last step)."""
        self.step += 1
        return self.step % self.lane.cfg.eval_every == 0 or self.step >= self.limit

    def took(self, step: int, loss: float) -> None:
        """Record step `step`'s training loss; a non-finite one ends the lane there (its later steps, taken before
        the loss was read, do not count)."""
        if self.failure is not None:
            return
        self.loss = loss
        self.report({"train_loss": loss, "lr": self.lane.cfg.lr}, step)
        if not math.isfinite(loss):
            self.failure, self.step = f"training loss {loss} at step {step}", step

    def checked(self, current: float, state: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Record a dev check; keep the state (`state()`, read only then) when it is the best so far."""
        self.report({"dev_loss": current}, self.step)
        self.history.append({"step": self.step, "train_loss": self.loss, "dev_loss": current})
        if not math.isfinite(current):
            self.failure = f"dev loss {current} at step {self.step}"
        elif current < self.best:
            self.best, self.best_state, self.stale = current, state(), 0
        else:
            self.stale += 1

    def log(self, stage: Stage) -> dict:
        """The stage's log; `diverged` names a non-finite loss (None when there was none), and `improved` says whether
        a dev check beat the state the stage started from."""
        best_step = next((h["step"] for h in self.history if h["dev_loss"] == self.best), 0)  # 0: a NaN start
        return {
            "stage": f"{stage.loss}:{stage.labels}",
            "steps": self.step,
            "epochs": self.epoch + 1,
            "best_dev_loss": self.best,
            "best_step": best_step,
            "history": self.history,
            "diverged": self.failure,
            "improved": best_step > 0 or self.step == 0,
        }
