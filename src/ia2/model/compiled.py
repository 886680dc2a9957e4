"""Compiled passes (`runtime.compile`): every decoder layer compiled by torch.compile, batch widths padded up to a
multiple of BUCKET, and generation with a static KV cache.

Regional compilation: each decoder layer is compiled on its own, so one graph serves every layer of the model, and
with dynamic shapes, so batch sizes and lengths do not recompile. The layers share one compiled function, whose
variants come from what its guards see, not from the layer's index (the activation tap records into the module it
reads, never into a growing list): grad mode (training, dev passes and collection), the first layer's input, which
needs no gradient, the attention mask's presence (None for a batch without padding), generation's cache, and a
pack's routed adapters. RECOMPILE_LIMIT allows for all of these; torch's default of 8 ran every layer past the 8th
variant eagerly. A layer call that still runs eagerly is warned about once, with torch's reason (`Watch`).
Padding widths to multiples of BUCKET keeps the shapes a run sees few (CUDA graphs, `cudagraphs`, record one graph
each). With a static cache transformers compiles decoding on a GPU. Off by default: on a CPU the first compile costs
more than a short run saves. Results equal the eager ones up to rounding (tested on CPU).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

import torch
from torch import nn

from ia2.model.taps import decoder_layers

BUCKET = 16
MODES = ("off", "on", "cudagraphs")
RECOMPILE_LIMIT = 64

log = logging.getLogger(__name__)


class Watch:
    """Counts the decoder layer calls that ran eagerly and warns at the first one with the reason torch._dynamo last
    logged for giving up on a frame (`_watched`)."""

    def __init__(self) -> None:
        self.eager, self.reason = 0, "none logged (TORCH_LOGS=recompiles,graph_breaks shows it)"

    def ran_eagerly(self) -> None:
        """Count a layer call that ran uncompiled; warn at the first."""
        self.eager += 1
        if self.eager == 1:
            log.warning("--compile: a decoder layer ran uncompiled (eager): %s", self.reason)


def _watched(layer: nn.Module, *args, **kwargs) -> object:
    """A decoder layer's own forward, counted by its Watch when it runs outside a compiled graph: the check is traced
    away when compiled. Bound to the layer as a method, so that a deep copy of the model calls its own layers."""
    if not torch.compiler.is_compiling():
        layer.ia2_watch.ran_eagerly()
    return type(layer).forward(layer, *args, **kwargs)


class _Reasons(logging.Handler):
    """Keeps the gist of torch._dynamo's last warning (which limit was hit, and its last recompile reason)."""

    def __init__(self, watch: Watch) -> None:
        super().__init__(logging.WARNING)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        lines = [line.strip() for line in record.getMessage().splitlines()]
        self.watch.reason = "; ".join(line for line in lines[:3] if not line.startswith("function"))


def apply(model: nn.Module, mode: str, backend: str | Callable = "inductor") -> None:
    """Compile the model's decoder layers in place (`on`: torch.compile's default mode; `cudagraphs`: its
    reduce-overhead mode, CUDA graphs; `backend` another torch.compile backend, for tests), pad its batches to
    multiples of BUCKET and generate with a static cache; `eager_calls` then counts the layer calls that ran
    uncompiled. Compiled variants are shared by code, not by model, so those of models compiled before are dropped
    (a live one recompiles when next called)."""
    if mode == "off":
        return
    torch._dynamo.reset()  # a new model: earlier models' variants would count towards this one's limit
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    watch = Watch()
    logging.getLogger("torch._dynamo.convert_frame").addHandler(_Reasons(watch))
    for layer in decoder_layers(model):
        layer.ia2_watch, layer.forward = watch, types.MethodType(_watched, layer)
        layer.compile(dynamic=True, mode="reduce-overhead" if mode == "cudagraphs" else None, backend=backend)
    model.generation_config.cache_implementation = "static"
    model.ia2_bucket, model.ia2_compile_watch = BUCKET, watch


def eager_calls(model: nn.Module) -> int:
    """How many decoder layer calls of a compiled model ran eagerly, outside any compiled graph (0 uncompiled)."""
    watch = getattr(model, "ia2_compile_watch", None)
    return watch.eager if watch else 0


def bucket(model: nn.Module) -> int:
    """The multiple batch widths are padded to for this model (1 unless it was compiled by `apply`)."""
    return getattr(model, "ia2_bucket", 1)
