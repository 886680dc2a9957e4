"""One batched trainer: Adam at a constant rate, dev-loss early stopping with the best adapter state restored."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .config import TrainConfig
from .errors import IA2Error
from .forward_pass import forward, make_batch, right_align
from .losses import LOSSES, LossInputs
from .methods import Stage
from .store import Stored, resolve
from .taps import Tap
from .tracking import Reporter


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
class Objective:
    """What a stage's losses are computed with: the model (its active adapter the one trained), the tap reading its
    activations, the stage, the training settings and the pad id; the same for every batch of the stage."""

    model: nn.Module
    tap: Tap
    stage: Stage
    cfg: TrainConfig
    pad_id: int


def batch_loss(objective: Objective, items: Sequence[Item], layer_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The stage's loss on one batch, given the teacher data its declaration asks for; `layer_scale` [L] replaces
    the batch's own teacher scale of per_layer_norm (a data-parallel shard is normalised by its whole batch's)."""
    model, tap, pad_id = objective.model, objective.tap, objective.pad_id
    loss = LOSSES[objective.stage.loss]
    batch = make_batch([i.prompt for i in items], [i.answer for i in items], pad_id, model.device.type)
    mask = batch.answer_mask().to(model.device)
    logits, acts = forward(model, batch, tap if loss.needs_acts else None)
    answers = right_align([torch.tensor(i.answer) for i in items], batch.keep).to(model.device)
    inputs = LossInputs(logits, mask, answers, objective.cfg, acts, layer_scale=layer_scale)
    if loss.needs_acts:
        inputs = replace(inputs, teacher_acts=teacher_acts(model, tap, items, batch.keep, pad_id))
    if loss.needs_distribution:
        inputs = replace(inputs, **teacher_distribution(items, batch.keep, logits.device))
    return loss.fn(inputs)


def teacher_acts(model: nn.Module, tap: Tap, items: Sequence[Item], keep: int, pad_id: int) -> torch.Tensor:
    """The batch's teacher activations [B, L, keep, H] in fp32 on the model's device: the items' own (read now when
    stored lazily, right-aligned) or, for online items, computed now."""
    if all(i.acts is None and i.icl_prompt is not None for i in items):
        return online_acts(model, tap, items, pad_id)
    if any(i.acts is None for i in items):
        raise IA2Error("the ia2 loss needs teacher activations: collect targets with a tap or use the online teacher")
    return right_align([resolve(i.acts) for i in items], keep, dim=1).to(model.device).float()


@torch.no_grad()
def online_acts(model: nn.Module, tap: Tap, items: Sequence[Item], pad_id: int) -> torch.Tensor:
    """The frozen teacher's activations for a batch, computed instead of stored: ICL prompt ⊕ answer in eval mode
    with the adapter disabled, as `targets.collect` reads them (positions of shorter answers are masked by the loss)."""
    training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            batch = make_batch([i.icl_prompt for i in items], [i.answer for i in items], pad_id, model.device.type)
            _, acts = forward(model, batch, tap)
    finally:
        model.train(training)
    return acts.float()


def teacher_distribution(items: Sequence[Item], keep: int, device: torch.device) -> dict[str, torch.Tensor | None]:
    """The batch's teacher next-token log-probs (`top_logp`) and their ids (`top_ids`, None for the whole
    vocabulary), right-aligned like the answers."""
    if any(i.top_logp is None for i in items):
        raise IA2Error(
            "the soft loss needs the teacher's next-token distributions: collect targets with `distribution`"
        )
    top_logp = right_align([resolve(i.top_logp) for i in items], keep).to(device)
    top_ids = None if items[0].top_ids is None else right_align([resolve(i.top_ids) for i in items], keep).to(device)
    return {"top_logp": top_logp, "top_ids": top_ids}


@torch.no_grad()
def dev_loss(objective: Objective, items: Sequence[Item], layer_scale: torch.Tensor | None = None) -> float:
    """Mean loss over the dev items' answer positions, as training averages it (each batch's mean weighted by its
    positions); with several processes each computes every world_size-th batch and the sum runs in batch order, so
    every process gets the number one process gets. Batches of `dev_batch_size`: no gradients are kept, so a dev pass
    can take larger batches than training, and its per-pass overhead does not grow with the dev set.

    With --per-layer-norm every batch is normalised by the whole dev set's teacher scale, `layer_scale` (computed
    here when not given: see `dev_scale`), so that the dev loss does not depend on `dev_batch_size`.
    """
    objective.model.eval()
    size = objective.cfg.dev_batch_size
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    scale = dev_scale(objective, items) if layer_scale is None else layer_scale
    total = 0.0
    for value in distributed.map_batches(
        objective.model, chunks, lambda chunk: batch_loss(objective, chunk, scale).item() * answer_positions(chunk)
    ):
        total += value
    return total / answer_positions(items)


@torch.no_grad()
def dev_scale(objective: Objective, items: Sequence[Item]) -> torch.Tensor | None:
    """With --per-layer-norm on an activation loss, the teacher mean square per layer [L] over all the dev items
    (stored or online, read in batches of `dev_batch_size`), as `losses.ia2` computes it for one batch; else None.

    The teacher is frozen, so a stage computes it once for all its dev evaluations.
    """
    cfg = objective.cfg
    if not (cfg.per_layer_norm and LOSSES[objective.stage.loss].needs_acts):
        return None
    total = torch.zeros(())
    for start in range(0, len(items), cfg.dev_batch_size):
        chunk = items[start : start + cfg.dev_batch_size]
        keep = max(max(len(i.answer), 1) for i in chunk)
        acts = teacher_acts(objective.model, objective.tap, chunk, keep, objective.pad_id)
        for row, item in enumerate(chunk):
            total = total + acts[row, :, keep - max(len(item.answer), 1) :].pow(2).sum(dim=(1, 2)).cpu()
    return total / (answer_positions(items) * acts.shape[-1])


def answer_positions(items: Sequence[Item]) -> int:
    """How many answer-producing positions a batch of these items has (every loss is a mean over them)."""
    return sum(max(len(i.answer), 1) for i in items)


def teacher_scale(items: Sequence[Item], stage: Stage, cfg: TrainConfig) -> torch.Tensor | None:
    """With --per-layer-norm on an activation loss, the batch's teacher mean square per layer [L], as `losses.ia2`
    computes it, from the stored activations every process holds; otherwise None."""
    if not (cfg.per_layer_norm and LOSSES[stage.loss].needs_acts):
        return None
    if any(i.acts is None for i in items):
        raise IA2Error(
            "--per-layer-norm with several processes needs stored teacher activations: drop --teacher-mode online"
        )
    acts = [resolve(i.acts).float() for i in items]
    return sum(a.pow(2).sum(dim=(1, 2)) for a in acts) / (answer_positions(items) * acts[0].shape[-1])


def batch_gradient(objective: Objective, batch: Sequence[Item], params: Sequence[nn.Parameter]) -> torch.Tensor:
    """Leave the gradient of the batch's loss, as one process computes it on the whole batch, in the `params`' .grad;
    returns the loss. One process runs `batch_loss` and its backward pass; several split the batch (`shared_backward`),
    each weighing its shard's loss by the shard's share of the batch's answer positions and normalising it by the whole
    batch's teacher scale."""
    if distributed.world_size() == 1:
        loss = batch_loss(objective, batch)
        loss.backward()
        return loss
    scale, positions = teacher_scale(batch, objective.stage, objective.cfg), answer_positions(batch)
    return distributed.shared_backward(
        objective.model,
        batch,
        lambda local: batch_loss(objective, local, scale) * (answer_positions(local) / positions),
        params,
    )


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the adapter weights (PEFT's own state dict aliases the live tensors)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def train_stage(
    model: nn.Module,
    tap: Tap,
    train: Sequence[Item],
    dev: Sequence[Item],
    stage: Stage,
    cfg: TrainConfig,
    seed: int,
    pad_id: int,
    desc: str = "train",
    report: Reporter | None = None,
) -> dict:
    """Train the active adapter on one stage with a fresh optimizer; restore the best-dev state; return the log.
    `report`, when given, receives each step's training loss and learning rate and each dev loss.

    With several processes every process draws the same batches and holds the same adapter: each step's batch is
    split across them (`batch_gradient`) and the dev loss too, so early stopping decides alike everywhere.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    objective = Objective(model, tap, stage, cfg, pad_id)
    scale = dev_scale(objective, dev)
    best, best_state = dev_loss(objective, dev, scale), adapter_state(model)
    history = [{"step": 0, "dev_loss": best}]
    if report:
        report({"dev_loss": best}, 0)
    step, stale, steps_per_epoch = 0, 0, math.ceil(len(train) / cfg.train_batch_size)
    total = cfg.max_epochs * steps_per_epoch
    limit = min(total, cfg.max_steps or total)
    bar = tqdm(total=limit, desc=desc, leave=False)
    for epoch in range(cfg.max_epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), cfg.train_batch_size):
            model.train()
            batch = [train[i] for i in order[start : start + cfg.train_batch_size]]
            optimizer.zero_grad(set_to_none=True)
            loss = batch_gradient(objective, batch, params)
            optimizer.step()
            step += 1
            bar.update()
            if report:
                report({"train_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}, step)
            if step % cfg.eval_every == 0 or step >= limit:  # the last steps are checked too, never dropped unseen
                current = dev_loss(objective, dev, scale)
                if report:
                    report({"dev_loss": current}, step)
                history.append({"step": step, "train_loss": loss.item(), "dev_loss": current})
                bar.set_postfix(dev=f"{current:.4g}", best=f"{best:.4g}")
                if current < best:
                    best, best_state, stale = current, adapter_state(model), 0
                else:
                    stale += 1
            if stale >= cfg.patience or step >= limit:
                break
        if stale >= cfg.patience or step >= limit:
            break
    bar.close()
    if cfg.restore_best:
        set_peft_model_state_dict(model, best_state)
    model.eval()
    best_step = next(h["step"] for h in history if h["dev_loss"] == best)
    return {
        "stage": f"{stage.loss}:{stage.labels}",
        "steps": step,
        "epochs": epoch + 1,
        "best_dev_loss": best,
        "best_step": best_step,
        "history": history,
    }
