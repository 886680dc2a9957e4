"""Compiled passes (`runtime.compile`): every decoder layer compiled by torch.compile, batch widths padded up to a
multiple of BUCKET, and generation with a static KV cache.

Regional compilation: each decoder layer is compiled on its own, so one graph serves every layer of the model, and
with dynamic shapes, so batch sizes and lengths do not recompile. A pack's composition does compile a few variants
(measured on CPU: 8 graphs for a pack of 3 adapters that stopped one by one, none more for a second such pack).
Padding widths to multiples of BUCKET keeps the shapes a run sees few (CUDA graphs, `cudagraphs`, record one graph
each). With a static
cache transformers compiles decoding on a GPU. Off by default: on a CPU the first compile costs more than a short run
saves. Results equal the eager ones up to rounding (tested on CPU).
"""

from __future__ import annotations

from torch import nn

from ia2.model.taps import decoder_layers

BUCKET = 16
MODES = ("off", "on", "cudagraphs")


def apply(model: nn.Module, mode: str) -> None:
    """Compile the model's decoder layers in place (`on`: torch.compile's default mode; `cudagraphs`: its
    reduce-overhead mode, CUDA graphs), pad its batches to multiples of BUCKET and generate with a static cache."""
    if mode == "off":
        return
    for layer in decoder_layers(model):
        layer.compile(dynamic=True, mode="reduce-overhead" if mode == "cudagraphs" else None)
    model.generation_config.cache_implementation = "static"
    model.ia2_bucket = BUCKET


def bucket(model: nn.Module) -> int:
    """The multiple batch widths are padded to for this model (1 unless it was compiled by `apply`)."""
    return getattr(model, "ia2_bucket", 1)
