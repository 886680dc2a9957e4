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
