"""Left-padded batches whose answer-producing positions are the last ones of every row."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ia2.model import compiled, padding
from ia2.model.taps import Tap


@dataclass
class Batch:
    """Left-padded inputs; row b's answer is produced at its last `n_answer[b]` positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    n_answer: torch.Tensor
    pad_id: int = 0

    def padded(self, multiple: int) -> Batch:
        """The batch left-padded with its pad id to a width that is a multiple of `multiple` (masked pads at position
        0 change no row's result), so that compiled passes see few shapes; a Python fill, so no device read."""
        extra = -self.input_ids.shape[1] % multiple
        if not extra:
            return self
        pad = lambda t, value: torch.cat([t.new_full((t.shape[0], extra), value), t], dim=1)  # noqa: E731
        return Batch(
            pad(self.input_ids, self.pad_id),
            pad(self.attention_mask, 0),
            pad(self.position_ids, 0),
            self.n_answer,
            self.pad_id,
        )

    @property
    def keep(self) -> int:
        return int(self.n_answer.max())

    def answer_mask(self) -> torch.Tensor:
        """[batch, keep] bool: which of the last `keep` positions produce an answer token (right-aligned)."""
        steps = torch.arange(self.keep)
        return steps.unsqueeze(0) >= (self.keep - self.n_answer).unsqueeze(1)


def make_batch(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int, device: str = "cpu"
) -> Batch:
    """Rows are prompt ⊕ answer[:-1]: the positions producing the answer are the row's last len(answer)."""
    seqs = [list(p) + list(a[:-1]) for p, a in zip(prompts, answers)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    n_answer = torch.tensor([max(len(a), 1) for a in answers])
    return Batch(to_device(ids, device), to_device(mask, device), to_device(positions, device), n_answer, pad_id)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory and without blocking, since a copy from pageable
    memory waits for the work already queued on the device (a host stall per batch)."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def right_align(rows: Sequence[torch.Tensor], keep: int, dim: int = 0) -> torch.Tensor:
    """Stack per-row tensors of varying length along `dim`, zero-padded on the left to `keep`."""
    out = []
    for row in rows:
        pad = keep - row.shape[dim]
        shape = list(row.shape)
        shape[dim] = pad
        out.append(torch.cat([row.new_zeros(shape), row], dim=dim))
    return torch.stack(out)


def forward(model: nn.Module, batch: Batch, tap: Tap | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B, keep, V] at the answer-producing positions and, with a tap, activations [B, L, keep, H].

    Adapters that prepend virtual tokens keep these positions last; see `adapters` for how padding is kept harmless.
    """
    batch = batch.padded(compiled.bucket(model))
    if padding.rows_alone(model, batch.input_ids.shape[1]) and not bool(batch.attention_mask.all()):
        return _row_by_row(model, batch, tap)
    inputs = dict(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=batch.keep, use_cache=False
    )
    if padding.prompt_tuning_active(model):
        context = padding.positions_from_mask(model)
    else:
        inputs["position_ids"], context = batch.position_ids, nullcontext()
    if tap is not None:
        tap.keep = batch.keep
    with context, tap if tap is not None else nullcontext():
        logits = model(**inputs).logits
    return logits, tap.take() if tap is not None else None


def _row_by_row(model: nn.Module, batch: Batch, tap: Tap | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`forward` on each row alone, unpadded, right-aligned back into the batch's shape (zeros where a row is short)."""
    logits, acts = [], []
    for row, length in enumerate(batch.attention_mask.sum(-1).tolist()):
        ids = batch.input_ids[row : row + 1, -length:]
        positions = torch.arange(length, device=ids.device).unsqueeze(0)
        alone = Batch(ids, torch.ones_like(ids), positions, torch.tensor([min(batch.keep, length)]), batch.pad_id)
        row_logits, row_acts = forward(model, alone, tap)
        logits.append(row_logits[0])
        if row_acts is not None:
            acts.append(row_acts[0])
    return right_align(logits, batch.keep), right_align(acts, batch.keep, dim=1) if acts else None


def length_sorted_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, to waste little compute on padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]
