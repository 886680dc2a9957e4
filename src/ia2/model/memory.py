"""Peak memory of a pass, estimated before it runs: one long row (a 7.5k-token prompt within an 8k context) can need
more memory than the machine has, and the kernel then kills the run without a word. From the model's config, the
batch's rows and width, and the attention implementation, ia2 estimates the activations of the longest batch and
refuses in one line, or splits an inference batch where fewer rows fit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ia2.errors import IA2Error

log = logging.getLogger(__name__)

# Attention implementations that never hold a row's [heads, S, S] scores (kernels that tile them).
TILED = ("flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class Shape:
    """What a pass's memory depends on: the model's sizes, the bytes of its weights' dtype, its attention
    implementation and device."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    bytes: int
    attention: str
    device: str
    checkpointed: bool = False

    @classmethod
    def of(cls, model: nn.Module) -> Shape:
        """The shape of a loaded model (its text config, weights' dtype, attention implementation, device)."""
        text = model.config.get_text_config()
        heads = text.num_attention_heads
        param = next(model.parameters())
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            bytes=param.element_size(),
            attention=str(getattr(model.config, "_attn_implementation", None) or "eager"),
            device=param.device.type,
            checkpointed=bool(getattr(model, "is_activation_checkpointing", False)),
        )

    def scores_held(self) -> bool:
        """Whether attention holds [heads, S, S] scores per row: eager does; SDPA's kernels and tiled ones do not."""
        return self.attention not in TILED and self.attention != "sdpa"


def peak_bytes(shape: Shape, rows: int, width: int, keep: int, training: bool) -> int:
    """Estimated peak bytes of the activations of one forward pass (and, `training`, its backward pass) over `rows`
    rows of `width` tokens, with full-vocabulary logits at the last `keep` positions of each row; the weights are not
    counted (already loaded).

    Inference holds one layer's work at a time: the residual and normed inputs, q, k, v and the attention output,
    the MLP's gate, up and activation, the [heads, S, S] scores in the weights' dtype and fp32 softmax where the
    attention holds them, and the [S, S] mask. Training keeps, for the backward pass, every layer's inputs to its
    products and its softmax probabilities (Korthikanti et al., 2022, without dropout), and the logits' gradients;
    with gradient checkpointing only every layer's input, and one layer's saved activations while it is recomputed.
    Measured on a tiny Llama (tests/test_memory.py), the estimate is 1 to 1.5 times the peak, eager and SDPA,
    inference and training; measured the same way on SmolLM2-135M on a CPU (fp32, SDPA; one row of 2,048 or 1,024
    tokens, four of 1,024 or 512, equal or padded), 0.94 to 1.43 times.
    """
    b, s = shape.bytes, width
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    layer = rows * s * b * (4 * shape.hidden + qkv + shape.heads * shape.head_dim + 3 * shape.intermediate)
    scores = rows * shape.heads * s * s * (2 * b + 4) if shape.scores_held() else 0
    mask = rows * s * s * (1 if shape.attention == "sdpa" else b)  # the causal mask: SDPA's boolean, eager's float
    logits = rows * keep * shape.vocab * (b + 8)  # the lm_head's output, its fp32 copy and log-softmax
    peak = layer + scores + mask + logits
    if training:
        saved = rows * s * b * (5 * shape.hidden + qkv + 3 * shape.intermediate)
        saved += rows * shape.heads * s * s * b if shape.scores_held() else 0
        kept = shape.layers * rows * s * b * shape.hidden + saved if shape.checkpointed else shape.layers * saved
        peak += kept + logits
    return peak


def available_bytes(device: torch.device | str) -> int:
    """Memory a pass can still take: on CUDA the device's free memory plus what PyTorch's allocator holds cached but
    unused, otherwise the host's available RAM (psutil where installed, else /proc/meminfo's MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        raise IA2Error("cannot tell the available memory: neither psutil nor /proc/meminfo's MemAvailable") from None
    return psutil.virtual_memory().available


def gib(n: int) -> str:
    """A byte count as people read it: GiB, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def fitting_rows(
    model: nn.Module, widths: Sequence[int], rows: int, keep: int, training: bool, where: Sequence[str], what: str
) -> int:
    """How many rows of the longest `widths` (each row's tokens; `where` names each row) fit one pass: `rows`
    when they do, fewer when only fewer do (an inference batch can be split); one line naming the longest row and
    the estimate against the available memory when even it alone does not, or when a training batch does not."""
    shape, free = Shape.of(model), available_bytes(next(model.parameters()).device)
    longest = max(range(len(widths)), key=widths.__getitem__)
    width = widths[longest]
    for size in range(min(rows, len(widths)), 0, -1):
        need = peak_bytes(shape, size, width, keep, training)
        if need <= free or training:
            break
    if size < min(rows, len(widths)) and need <= free:
        log.info("%s: batches of %d rows, the most that fit in %s (%s each)", what, size, gib(free), gib(need))
    if need > free:
        device = "GPU memory free" if shape.device == "cuda" else "RAM available"
        raise IA2Error(
            f"{where[longest]}: {what} of {size} row(s) of {width} tokens needs about {gib(need)}, more than the "
            f"{gib(free)} of {device}: shorten or drop this row, or lower the batch size"
        )
    return size
