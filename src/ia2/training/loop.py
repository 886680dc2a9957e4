"""One batched trainer: Adam at a constant rate, dev-loss early stopping with the best adapter state restored; several
adapters (lanes) may be trained together in one pass (`train_lanes`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from peft import PeftModel, get_peft_model_state_dict
from torch import nn
from tqdm.auto import tqdm

from ia2.config import TrainConfig
from ia2.errors import IA2Error
from ia2.model import distributed
from ia2.model.forward_pass import forward, make_batch, right_align, to_device
from ia2.model.taps import Tap
from ia2.registry import LOSSES
from ia2.teacher.store import resolve
from ia2.training import packing
from ia2.training.lanes import Item, Lane, Progress
from ia2.training.losses import LossInputs
from ia2.training.methods import Stage
from ia2.training.tracking import Reporter


@dataclass(frozen=True)
class Objective:
    """What a stage's losses are computed with: the model (its active adapter the one trained), the tap reading its
    activations, the stage, the training settings and the pad id; the same for every batch of the stage."""

    model: nn.Module
    tap: Tap
    stage: Stage
    cfg: TrainConfig
    pad_id: int


def group_losses(
    objective: Objective,
    groups: Sequence[Sequence[Item]],
    adapters: Sequence[str] | None = None,
    scales: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """Each group's loss from one forward pass over all their rows: with `adapters`, group g's rows go through
    adapter adapters[g] (`packing.routed`), else every row through the active adapter. An empty group's loss is 0.
    `scales[g]` [L] replaces group g's own teacher scale of per_layer_norm (a data-parallel shard is normalised by
    its whole batch's, the dev set by the whole dev set's)."""
    model, tap, pad_id = objective.model, objective.tap, objective.pad_id
    loss = LOSSES[objective.stage.loss]
    items = [i for g in groups for i in g]
    batch = make_batch([i.prompt for i in items], [i.answer for i in items], pad_id, model.device.type)
    mask = to_device(batch.answer_mask(), model.device)
    routing = packing.routed(model, adapters, [len(g) for g in groups]) if adapters else nullcontext()
    with routing:
        logits, acts = forward(model, batch, tap if loss.needs_acts else None)
    answers = to_device(right_align([torch.tensor(i.answer) for i in items], batch.keep), model.device)
    teacher: dict[str, torch.Tensor | None] = {}
    if loss.needs_acts:
        teacher["teacher_acts"] = teacher_acts(model, tap, items, batch.keep, pad_id)
    if loss.needs_distribution:
        teacher.update(teacher_distribution(items, batch.keep, logits.device))
    out, start = [], 0
    for g, group in enumerate(groups):
        rows = slice(start, start + len(group))
        start += len(group)
        if not group:
            out.append(logits.new_zeros((), dtype=torch.float32))
            continue
        parts = {k: None if v is None else v[rows] for k, v in teacher.items()}
        own = None if acts is None else acts[rows]
        scale = scales[g] if scales else None
        out.append(
            loss.fn(LossInputs(logits[rows], mask[rows], answers[rows], objective.cfg, own, **parts, layer_scale=scale))
        )
    return out


def batch_loss(objective: Objective, items: Sequence[Item], layer_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The stage's loss on one batch through the active adapter (see `group_losses`)."""
    return group_losses(objective, [items], scales=[layer_scale])[0]


def teacher_acts(model: nn.Module, tap: Tap, items: Sequence[Item], keep: int, pad_id: int) -> torch.Tensor:
    """The batch's teacher activations [B, L, keep, H] in fp32 on the model's device: the items' own (read now when
    stored lazily, right-aligned) or, for online items, computed now."""
    if all(i.acts is None and i.icl_prompt is not None for i in items):
        return online_acts(model, tap, items, pad_id)
    if any(i.acts is None for i in items):
        raise IA2Error("the ia2 loss needs teacher activations: collect targets with a tap or use the online teacher")
    return to_device(right_align([resolve(i.acts) for i in items], keep, dim=1), model.device).float()


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
def dev_losses(
    objective: Objective,
    dev_sets: Sequence[Sequence[Item]],
    adapters: Sequence[str] | None = None,
    scales: Sequence[torch.Tensor | None] | None = None,
) -> list[float]:
    """Mean loss over each dev set's answer positions, as training averages it (each batch's mean weighted by its
    positions), dev set g scored through adapter adapters[g] when given (one pass serves them all: the j-th batch of
    every set together). With several processes each computes every world_size-th batch and the sums run in batch
    order, so every process gets the numbers one process gets. Batches of `dev_batch_size`: no gradients are kept,
    so a dev pass can take larger batches than training, and its per-pass overhead does not grow with the dev set.
    The sums stay on the device in float64 (as the host would add them) and are read once, at the end.

    With --per-layer-norm every batch is normalised by its whole dev set's teacher scale, `scales[g]` (computed here
    when not given: see `dev_scale`), so that the dev loss does not depend on `dev_batch_size`.
    """
    objective.model.eval()
    size = objective.cfg.dev_batch_size
    scales = scales or [dev_scale(objective, items) for items in dev_sets]
    chunked = [[items[start : start + size] for start in range(0, len(items), size)] for items in dev_sets]
    rounds = [[c[j] if j < len(c) else [] for c in chunked] for j in range(max(map(len, chunked)))]

    device = objective.model.device

    def weighted(groups: list[Sequence[Item]]) -> torch.Tensor | list[float]:
        losses = torch.stack(group_losses(objective, groups, adapters, scales)).double()
        sums = losses * to_device(torch.tensor([answer_positions(g) for g in groups], dtype=torch.float64), device)
        return sums.tolist() if distributed.launched() else sums  # objects cross processes, tensors stay here

    totals = torch.zeros(len(dev_sets), dtype=torch.float64, device=device)
    for values in distributed.map_batches(objective.model, rounds, weighted):
        totals = totals + torch.as_tensor(values, dtype=torch.float64, device=device)
    positions = to_device(torch.tensor([answer_positions(items) for items in dev_sets], dtype=torch.float64), device)
    return (totals / positions).tolist()


def dev_loss(objective: Objective, items: Sequence[Item], layer_scale: torch.Tensor | None = None) -> float:
    """Mean loss over the dev items' answer positions through the active adapter (see `dev_losses`)."""
    return dev_losses(objective, [items], scales=[layer_scale] if layer_scale is not None else None)[0]


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


def batch_gradient(
    objective: Objective,
    batches: Sequence[Sequence[Item]],
    params: Sequence[nn.Parameter],
    adapters: Sequence[str] | None = None,
) -> torch.Tensor:
    """Leave the gradient of each batch's loss (batch g through adapter adapters[g] when given, see `group_losses`),
    as one process computes it on the whole batch, in the `params`' .grad; returns the losses [len(batches)]. The
    adapters' parameters are disjoint, so the gradient of their sum is each one's own. One process runs the forward
    and backward passes; several split the rows (`shared_backward`), each weighing its shard of batch g by the shard's
    share of that batch's answer positions and normalising it by the whole batch's teacher scale."""
    rows = [(g, item) for g, batch in enumerate(batches) for item in batch]

    def whole_losses() -> torch.Tensor:
        return torch.stack(group_losses(objective, batches, adapters))

    def shard_losses(local: Sequence[tuple[int, Item]]) -> torch.Tensor:
        scales = [teacher_scale(batch, objective.stage, objective.cfg) for batch in batches]
        groups = [[item for h, item in local if h == g] for g in range(len(batches))]
        losses = group_losses(objective, groups, adapters, scales)
        positions = [answer_positions(batch) for batch in batches]
        return torch.stack([loss * (answer_positions(group) / n) for loss, group, n in zip(losses, groups, positions)])

    return distributed.shared_backward(objective.model, rows, shard_losses, params, len(batches), whole_losses)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the adapter weights (PEFT's own state dict aliases the live tensors)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def train_lanes(
    model: PeftModel,
    tap: Tap,
    lanes: Sequence[Lane],
    stage: Stage,
    pad_id: int,
    pack: packing.Pack | None = None,
) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """Train each lane's adapter on one stage with a fresh optimizer and return its log and final state (its best-dev
    state with restore_best). One lane trains the model's own adapter; several are packed: each gets an adapter of
    its own (of `pack` when given, which then outlives the call; else of one built for it, `packing.Pack`), they
    share every forward and backward pass, training and dev alike, and a lane that stops leaves the pack. Each keeps
    its own data order, Adam state, learning rate, dev checks and early stopping, so a lane trains as it would alone
    (up to the rounding of the larger batched products).

    With several processes every process draws the same batches and holds the same adapters: each step's rows are
    split across them (`batch_gradient`) and the dev passes too, so early stopping decides alike everywhere.
    """
    _check_packable(lanes)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(lanes[0].seed)  # random draws (dropout; packs have none) depend on the lane, not on the order
        if len(lanes) == 1:
            own = model.active_adapter
            live = packing.live_state(model, own)
            packing.load_state(model, own, live, lanes[0].state)
            out = _train(model, tap, lanes, stage, pad_id, None, lambda i: packing.copy_state(model, own, live))
            if lanes[0].cfg.restore_best:
                packing.load_state(model, own, live, out[0][1])
            return out
        with nullcontext(pack) if pack else packing.Pack(model, len(lanes)) as opened:
            with opened.active([lane.state for lane in lanes]):
                return _train(model, tap, lanes, stage, pad_id, opened, opened.state)


def _check_packable(lanes: Sequence[Lane]) -> None:
    """Packed lanes share their losses' settings and dev batches; only learning rate and stopping may differ."""
    shared = {(lane.cfg.w, lane.cfg.per_layer_norm, lane.cfg.dev_batch_size) for lane in lanes}
    if len(shared) > 1:
        raise IA2Error("packed adapters must share w, per_layer_norm and dev_batch_size: train them apart (--pack 1)")


def _optimizer(params: Sequence[Sequence[nn.Parameter]], lanes: Sequence[Lane]) -> torch.optim.Adam:
    """Adam with one parameter group per lane (its own learning rate), fused into a kernel per group where the
    parameters' device has one (CUDA, CPU), else torch's default multi-tensor path."""
    devices = {p.device.type for group in params for p in group}
    fused = True if devices <= {"cuda", "cpu"} else None
    return torch.optim.Adam([{"params": p, "lr": lane.cfg.lr} for p, lane in zip(params, lanes)], fused=fused)


def _train(
    model: PeftModel,
    tap: Tap,
    lanes: Sequence[Lane],
    stage: Stage,
    pad_id: int,
    pack: packing.Pack | None,
    state: Callable[[int], dict[str, torch.Tensor]],
) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """`train_lanes` once the lanes' adapters are in place: the model's own (`pack` None) or the pack's active ones;
    `state(i)` copies lane i's weights. The host reads the device once per dev round: each step's training losses
    wait on the device until a check is due, then are read in one go and taken in order (`Progress.took`)."""
    names = pack.names[: len(lanes)] if pack else None
    params = pack.params[: len(lanes)] if pack else [[p for p in model.parameters() if p.requires_grad]]
    optimizer = _optimizer(params, lanes)
    objective = Objective(model, tap, stage, lanes[0].cfg, pad_id)
    pick = lambda idx: None if names is None else [names[i] for i in idx]  # noqa: E731
    scales = [dev_scale(objective, lane.dev) for lane in lanes]
    first = dev_losses(objective, [lane.dev for lane in lanes], names, scales)
    runs = [Progress(lane, value) for lane, value in zip(lanes, first)]
    keep = [(lambda i=i: state(i)) if lane.cfg.restore_best else (lambda: None) for i, lane in enumerate(lanes)]
    desc = lanes[0].desc if pack is None else f"pack of {len(lanes)}"
    bar = tqdm(total=max(r.limit for r in runs), desc=desc, leave=False)
    pending: list[tuple[list[int], list[int], torch.Tensor]] = []
    while active := [i for i, r in enumerate(runs) if not r.done]:
        model.train()
        batches = [runs[i].next_batch() for i in active]
        optimizer.zero_grad(set_to_none=True)
        losses = batch_gradient(objective, batches, [p for i in active for p in params[i]], pick(active))
        _drop_gradients(params, active)
        optimizer.step()
        bar.update()
        checks = [i for i in active if runs[i].stepped()]
        pending.append((active, [runs[i].step for i in active], losses))
        if not checks:
            continue
        _took(runs, pending)
        pending = []
        due = [i for i in checks if runs[i].failure is None]
        if due:  # the last steps are checked too, never dropped unseen
            values = dev_losses(objective, [lanes[i].dev for i in due], pick(due), [scales[i] for i in due])
            for i, value in zip(due, values):
                runs[i].checked(value, keep[i])
            bar.set_postfix(dev=f"{values[0]:.4g}", best=f"{runs[due[0]].best:.4g}", active=len(active))
    bar.close()
    model.eval()
    return [
        (r.log(stage), r.best_state if lane.cfg.restore_best else state(i))
        for i, (r, lane) in enumerate(zip(runs, lanes))
    ]


def _drop_gradients(params: Sequence[Sequence[nn.Parameter]], active: Sequence[int]) -> None:
    """Forget the gradients of lanes that have stopped: a packed pass reads every adapter of the pack, so theirs come
    back as zeros, which Adam would still step with its momentum (it skips a parameter without one)."""
    for i in set(range(len(params))) - set(active):
        for p in params[i]:
            p.grad = None


def _took(runs: Sequence[Progress], pending: Sequence[tuple[list[int], list[int], torch.Tensor]]) -> None:
    """Hand each lane its training losses of the steps since the last read, in order, read from the device at once."""
    values = torch.cat([losses for _, _, losses in pending]).tolist()
    start = 0
    for active, steps, losses in pending:
        for i, step, loss in zip(active, steps, values[start : start + len(active)]):
            runs[i].took(step, loss)
        start += len(active)


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
    """Train the active adapter alone on one stage with a fresh optimizer (see `train_lanes`); restore the best-dev
    state; return the log. `report`, when given, receives each step's training loss and learning rate and each dev
    loss."""
    lane = Lane(train, dev, cfg, seed, adapter_state(model), desc, report)
    return train_lanes(model, tap, [lane], stage, pad_id)[0][0]
