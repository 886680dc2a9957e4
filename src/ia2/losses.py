"""Training losses, all computed in fp32 over the answer-producing positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of −log p(y_t | prefix). logits [B,T,V], targets and mask [B,T]."""
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


def soft(logits: torch.Tensor, top_ids: torch.Tensor | None, top_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(teacher ‖ student) over next tokens: soft-label SFT (knowledge distillation).

    logits [B,T,V]; top_logp [B,T,k] the teacher's log-probs of tokens `top_ids` [B,T,k], or of the whole vocabulary
    when top_ids is None; mask [B,T]. With k < V all other tokens form one "rest" bucket on both sides.
    """
    student = F.log_softmax(logits.float(), dim=-1)
    teacher = top_logp.float()
    if top_ids is not None:
        teacher, student = _buckets(teacher, student, top_ids)
    p = teacher.exp()
    kl = torch.where(p > 0, p * (teacher - student), 0.0).sum(-1)
    return (kl * mask).sum() / mask.sum()


def _buckets(teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs of the k kept ids and, when k < V, of the rest of the vocabulary as one bucket."""
    kept = student.gather(-1, ids)
    if ids.shape[-1] == student.shape[-1]:
        return teacher, kept
    teacher_rest = torch.log1p(-teacher.logsumexp(-1).exp().clamp(max=1.0))
    student_rest = student.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return torch.cat([teacher, teacher_rest.unsqueeze(-1)], -1), torch.cat([kept, student_rest.unsqueeze(-1)], -1)
