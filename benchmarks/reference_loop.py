"""A faithful, readable re-implementation of the reference code's teacher collection and training loop, for timing.

Written from a description of the reference code (not copied): the baseline our pipeline is compared with.

Teacher collection, one example at a time: for every generated token, a full forward pass over the whole prefix
(no cache reuse), full-vocabulary logits at every position, hooks that clone each layer's full [1, S, H]
self-attention output, the last position copied to the CPU layer by layer, greedy argmax, stop after T tokens or
at EOS (its activation recorded).

Training: batch 1, each loss divided by the accumulation count min(4, N), an Adam step every 4 examples of an epoch
(a remainder leaks into the next epoch), a full dev pass at batch 1 after every 2 optimizer steps or a step on the
epoch's last example, early stopping after 5 non-improving dev passes, no best-state restore, and
`torch.cuda.empty_cache()` after every example. IA2 loss: Σ_layers MSE of the attention outputs at the answer
positions, computed in the model's dtype; SFT loss: Hugging Face's CE on the gold answer, with full logits.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn$")


class AttentionRecorder:
    """Forward hooks on every layer's `self_attn` keeping a clone of its whole output [1, S, H], as the reference."""

    def __init__(self, model: nn.Module) -> None:
        found = {int(m.group(1)): module for name, module in model.named_modules() if (m := LAYER.search(name))}
        self.modules = [found[i] for i in sorted(found)]
        self.outputs: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        out = output[0] if isinstance(output, tuple) else output
        self.outputs.append(out.clone())

    def __enter__(self) -> AttentionRecorder:
        self.outputs = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> list[torch.Tensor]:
        """The outputs recorded by the last forward pass, one per layer in order; clears the record."""
        outputs, self.outputs = self.outputs, []
        return outputs


def eos_ids(model: nn.Module) -> set[int]:
    """The model's end-of-sequence token ids from its generation config."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


@torch.no_grad()
def collect_one(
    model: nn.Module, recorder: AttentionRecorder, prompt: Sequence[int], max_new_tokens: int, stop_ids: set[int]
) -> tuple[list[int], torch.Tensor]:
    """Greedy answer and activations [L, T′, H] (model dtype, CPU) of one ICL prompt, re-running the prefix per
    token."""
    ids = torch.tensor([list(prompt)], device=model.device)
    tokens: list[int] = []
    steps: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        with recorder:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        steps.append(torch.stack([out[0, -1].to("cpu") for out in recorder.take()]))
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if token in stop_ids:
            break
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return tokens, torch.stack(steps, dim=1)


def collect(
    model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Teacher tokens and activations for every prompt, one example at a time."""
    model.eval()
    recorder, stop_ids = AttentionRecorder(model), eos_ids(model)
    results = [collect_one(model, recorder, p, max_new_tokens, stop_ids) for p in prompts]
    return [r[0] for r in results], [r[1] for r in results]


@dataclass(frozen=True)
class Example:
    """A training example: the prompt without demos, the answer fed after it and, for IA2, its teacher activations."""

    prompt: list[int]
    answer: list[int]
    acts: torch.Tensor | None = None


def ia2_loss(model: nn.Module, recorder: AttentionRecorder, ex: Example) -> torch.Tensor:
    """mean((a − a*)²) × L over the answer positions of X = prompt ⊕ answer, in the model's dtype."""
    ids = torch.tensor([ex.prompt + ex.answer], device=model.device)
    with recorder:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    start = len(ex.prompt) - 1
    current = torch.stack([out[0, start : start + len(ex.answer)] for out in recorder.take()])
    target = ex.acts.to(device=current.device, dtype=current.dtype)
    return ((current - target) ** 2).mean() * current.shape[0]


def ce_loss(model: nn.Module, recorder: AttentionRecorder, ex: Example) -> torch.Tensor:
    """Mean CE of the answer tokens given prompt ⊕ answer, through the model's own `labels` path (full logits)."""
    ids = torch.tensor([ex.prompt + ex.answer], device=model.device)
    labels = torch.tensor([[-100] * len(ex.prompt) + ex.answer], device=model.device)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


LOSSES: dict[str, Callable[[nn.Module, AttentionRecorder, Example], torch.Tensor]] = {"ia2": ia2_loss, "ce": ce_loss}


@torch.no_grad()
def dev_pass(model: nn.Module, recorder: AttentionRecorder, examples: Sequence[Example], loss: str) -> float:
    """Mean loss over `examples`, one at a time, in eval mode: the reference's dev evaluation."""
    model.eval()
    return sum(LOSSES[loss](model, recorder, ex).item() for ex in examples) / len(examples)


@dataclass
class Log:
    """What a training run did: examples seen, optimizer steps, dev passes and their losses, and why it ended."""

    examples: int = 0
    steps: int = 0
    dev_losses: list[float] = field(default_factory=list)
    epochs: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class LoopConfig:
    """The reference's optimisation defaults; `eval_every=None` turns dev passes off, `patience=None` early stopping."""

    lr: float = 1e-3
    accumulation: int = 4
    eval_every: int | None = 2
    patience: int | None = 5
    max_epochs: int = 50
    limit: int | None = None
    seed: int = 0


def train(model: nn.Module, examples: Sequence[Example], dev: Sequence[Example], loss: str, cfg: LoopConfig) -> Log:
    """The reference training loop; `cfg.limit` stops after that many training examples (to time an epoch's prefix)."""
    recorder, log = AttentionRecorder(model), Log()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    accumulation, rng, best, stale = min(cfg.accumulation, len(examples)), random.Random(cfg.seed), math.inf, 0
    for _ in range(cfg.max_epochs):
        log.epochs += 1
        order = list(range(len(examples)))
        rng.shuffle(order)
        for position, index in enumerate(order):
            model.train()
            (LOSSES[loss](model, recorder, examples[index]) / accumulation).backward()
            log.examples += 1
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            if (position + 1) % accumulation == 0:
                optimizer.step()
                optimizer.zero_grad()
                log.steps += 1
                last = position == len(order) - 1
                if cfg.eval_every and (log.steps % cfg.eval_every == 0 or last):
                    current = dev_pass(model, recorder, dev, loss)
                    log.dev_losses.append(current)
                    best, stale = (current, 0) if current < best else (best, stale + 1)
            if cfg.patience is not None and stale >= cfg.patience:
                log.stopped_early = True
                return log
            if cfg.limit is not None and log.examples >= cfg.limit:
                return log
    return log
