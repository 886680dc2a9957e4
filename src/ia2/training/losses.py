"""Training losses as declarations (a function and the teacher data it needs, by name in `ia2.registry.LOSSES`), all
computed in fp32 over the answer-producing positions only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ia2.registry import LOSSES

if TYPE_CHECKING:
    import torch

    from ia2.config import TrainConfig


def ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of −log p(y_t | prefix). logits [B,T,V], targets and mask [B,T]."""
    import torch.nn.functional as F

    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum() / mask.sum()


def ia2(acts: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, per_layer_norm: bool = False) -> torch.Tensor:
    """Σ_layers mean over (answer position, hidden) of (a − a*)²: the paper's "MSE × L".

    acts and target are [B, L, T, H]; mask is [B, T]. With per_layer_norm each layer's MSE is divided
    by the teacher's mean square at that layer, so layers of very different scale weigh alike.
    """
    weights = mask[:, None, :, None].float()
    denom = mask.sum() * acts.shape[-1]
    sq = ((acts.float() - target.float()) ** 2 * weights).sum(dim=(0, 2, 3)) / denom
    if per_layer_norm:
        sq = sq / ((target.float() ** 2 * weights).sum(dim=(0, 2, 3)) / denom).clamp(min=1e-12)
    return sq.sum()


def joint(ia2_loss: torch.Tensor, ce_loss: torch.Tensor, w: float) -> torch.Tensor:
    """(1 − w)·ia2 + w·ce."""
    return (1 - w) * ia2_loss + w * ce_loss


def soft(
    logits: torch.Tensor, top_ids: torch.Tensor | None, top_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over answer positions of KL(teacher ‖ student) over next tokens: soft-label SFT (knowledge distillation).

    logits [B,T,V]; top_logp [B,T,k] the teacher's log-probs of tokens `top_ids` [B,T,k], or of the whole vocabulary
    when top_ids is None; mask [B,T]. With k < V all other tokens form one "rest" bucket on both sides.
    """
    import torch
    import torch.nn.functional as F

    student = F.log_softmax(logits.float(), dim=-1)
    teacher = top_logp.float()
    if top_ids is not None:
        teacher, student = _buckets(teacher, student, top_ids)
    p = teacher.exp()
    kl = torch.where(p > 0, p * (teacher - student), 0.0).sum(-1)
    return (kl * mask).sum() / mask.sum()


def _buckets(teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs of the k kept ids and, when k < V, of the rest of the vocabulary as one bucket."""
    import torch

    kept = student.gather(-1, ids)
    if ids.shape[-1] == student.shape[-1]:
        return teacher, kept
    teacher_rest = torch.log1p(-teacher.logsumexp(-1).exp().clamp(max=1.0))
    student_rest = student.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return torch.cat([teacher, teacher_rest.unsqueeze(-1)], -1), torch.cat([kept, student_rest.unsqueeze(-1)], -1)


@dataclass(frozen=True)
class LossInputs:
    """What a loss may read for one batch, right-aligned at the answer-producing positions: the student's logits
    [B, T, V] and activations [B, L, T, H], the answer ids fed [B, T] and their mask [B, T], the teacher's
    activations and next-token distribution where the loss declares it needs them, and the training settings."""

    logits: torch.Tensor
    mask: torch.Tensor
    answers: torch.Tensor
    train: TrainConfig
    acts: torch.Tensor | None = None
    teacher_acts: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logp: torch.Tensor | None = None
    layer_scale: torch.Tensor | None = None


@dataclass(frozen=True)
class Loss:
    """A training loss: its function and the teacher data it needs (activations at the answer positions, next-token
    distributions); declared by name in `ia2.registry.LOSSES`. Whose answers are fed is the stage's choice."""

    fn: Callable[[LossInputs], torch.Tensor]
    needs_acts: bool = False
    needs_distribution: bool = False


def _ce(x: LossInputs) -> torch.Tensor:
    return ce(x.logits, x.answers, x.mask)


def _ia2(x: LossInputs) -> torch.Tensor:
    """`ia2`, normalised per layer by the batch's teacher scale or, when given, by `layer_scale` [L] (a data-parallel
    shard's whole batch, or the whole dev set)."""
    if x.layer_scale is None:
        return ia2(x.acts, x.teacher_acts, x.mask, x.train.per_layer_norm)
    root = x.layer_scale.clamp(min=1e-12).sqrt().to(x.teacher_acts.device)[None, :, None, None]
    return ia2(x.acts / root, x.teacher_acts / root, x.mask)


def _joint(x: LossInputs) -> torch.Tensor:
    return joint(_ia2(x), _ce(x), x.train.w)


def _soft(x: LossInputs) -> torch.Tensor:
    return soft(x.logits, x.top_ids, x.top_logp, x.mask)


LOSSES.register("ce", Loss(_ce))
LOSSES.register("ia2", Loss(_ia2, needs_acts=True))
LOSSES.register("joint", Loss(_joint, needs_acts=True))
LOSSES.register("soft", Loss(_soft, needs_distribution=True))
