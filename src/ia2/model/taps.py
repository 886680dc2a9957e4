"""Where activations are read: one forward hook per decoder layer, validated at start-up."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ia2.errors import IA2Error
from ia2.registry import SITES

if TYPE_CHECKING:
    import torch
    from torch import nn

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)$")

# Per site, the submodule of a decoder layer whose output is read: (without output norms, with them); "" is the
# layer itself. `attn` and `mlp` read what the sublayer adds to the residual stream; the `_pre_norm` sites read the
# sublayer's own output, before a post-sublayer norm (the same module on architectures without one).
SITES.register("attn", ("self_attn", "post_attention_layernorm"))
SITES.register("attn_pre_norm", ("self_attn", "self_attn"))
SITES.register("mlp", ("mlp", "post_feedforward_layernorm"))
SITES.register("mlp_pre_norm", ("mlp", "mlp"))
SITES.register("residual", ("", ""))


def has_output_norms(layer: nn.Module) -> bool:
    """Whether a decoder layer normalises each sublayer's output before the residual add (Gemma 2/3, Olmo 2).

    The sign is a `post_feedforward_layernorm`: layers with one also apply `post_attention_layernorm` to the
    attention output, while in layers without one (Llama, Qwen3, Mistral) `post_attention_layernorm` is the pre-MLP
    norm and the sublayer outputs are added to the residual as they are.
    """
    from torch import nn

    return isinstance(getattr(layer, "post_feedforward_layernorm", None), nn.Module)


def site_module(layer: nn.Module, site: str) -> str:
    """The path, inside a decoder layer, of the module read at `site` ("" for the layer itself)."""
    return SITES[site][has_output_norms(layer)]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Every decoder layer in order; searched inside the text decoder, so that a multimodal model's vision-encoder
    layers are never taken for it."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    found = {}
    for name, module in decoder.named_modules():
        match = LAYER.search(name)
        if match:
            found.setdefault(int(match.group(1)), module)
    n_layers = model.config.get_text_config().num_hidden_layers
    if sorted(found) != list(range(n_layers)):
        raise IA2Error(f"decoder layers: found {sorted(found)}, expected 0..{n_layers - 1}")
    return [found[i] for i in range(n_layers)]


def layer_modules(model: nn.Module, site: str = "attn") -> list[nn.Module]:
    """The module whose output is read at `site`, for every decoder layer in order."""
    if site not in SITES:
        raise IA2Error(f"unknown tap site {site!r}: choose from {', '.join(SITES)}")
    modules = []
    for layer in decoder_layers(model):
        path = site_module(layer, site)
        try:
            modules.append(layer.get_submodule(path))
        except AttributeError:
            raise IA2Error(f"tap site {site!r}: decoder layer {type(layer).__name__} has no module {path!r}") from None
    return modules


class Tap:
    """Records, per layer, the module output at the last `keep` positions of each forward pass (one tap per site may
    record at a time: the record is kept on the module read).

    For `attn` that is what the self-attention sublayer adds to the residual stream: its output after o_proj and,
    on architectures with output norms (Gemma 3), after `post_attention_layernorm`; `module` names the module read,
    inside each decoder layer. `layers` restricts the record to a subset of decoder layers (default: all), e.g. to
    align only the upper half.
    """

    def __init__(self, model: nn.Module, site: str = "attn", layers: tuple[int, ...] | None = None) -> None:
        modules = layer_modules(model, site)
        if layers is not None and (
            not layers or any(not 0 <= i < len(modules) for i in layers) or len(set(layers)) != len(layers)
        ):
            raise IA2Error(f"--layers {list(layers)}: expected distinct layer indices in 0..{len(modules) - 1}")
        self.site, self.layers = site, tuple(range(len(modules))) if layers is None else tuple(sorted(layers))
        self.modules, self.all_layers = [modules[i] for i in self.layers], len(self.layers) == len(modules)
        self.module = site_module(decoder_layers(model)[0], site)
        self.keep, self._handles, self._slot = 1, [], f"ia2_tapped_{site}"

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        """Keep the output's last `keep` positions on the module itself: the same code and constants for every layer,
        so that one compiled decoder layer serves them all (appending to a list made each layer's list length a
        guard, and a recompile per layer)."""
        out = output[0] if isinstance(output, tuple) else output
        setattr(module, self._slot, out[:, -self.keep :, :])

    def __enter__(self) -> Tap:
        for m in self.modules:
            setattr(m, self._slot, None)
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> torch.Tensor:
        """The recorded outputs as [batch, layers, keep, hidden]; clears the record."""
        outputs = [getattr(m, self._slot, None) for m in self.modules]
        missing = sum(o is None for o in outputs)
        if missing:
            raise RuntimeError(f"tap recorded no output for {missing} of {len(self.modules)} layers")
        import torch

        for m in self.modules:
            setattr(m, self._slot, None)
        return torch.stack(outputs, dim=1)
