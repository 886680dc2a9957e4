"""A loaded model as the pipeline passes it on: the model, its tokenizer and activation tap, and its names."""

from __future__ import annotations

from dataclasses import dataclass, replace

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ia2.model.taps import Tap


@dataclass(frozen=True)
class ModelHandle:
    """The model (with its adapter, once a seed has one), its tokenizer and tap, the base model's fingerprint (part
    of the teacher targets' key) and class name. A seed's fresh adapter, or a merged copy, is a new handle
    (`with_model`), never an assignment."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tap: Tap
    fingerprint: str
    model_class: str

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def with_model(self, model: PreTrainedModel) -> ModelHandle:
        """This handle with another model: a fresh adapter around the same base keeps the tap (its hooks sit on the
        base's layers); another model, such as a merged copy, gets a tap of its own at the same site and layers."""
        same = _base(model) is _base(self.model)
        return replace(self, model=model, tap=self.tap if same else Tap(model, self.tap.site, self.tap.layers))


def _base(model: PreTrainedModel) -> PreTrainedModel:
    """The transformer a (PEFT-wrapped) model runs on."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
