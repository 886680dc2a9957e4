"""`IA2Trainer`: a transformers `Trainer` whose loss is a stage of an ia2 method (IA2's activation MSE against the
frozen ICL teacher, cross-entropy on the labels, ...), trained stage by stage on a PEFT model. Evaluation, early
stopping (`EarlyStoppingCallback`), best-state loading (`load_best_model_at_end`), launchers, trackers and
`push_to_hub` are the Trainer's own."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from torch import nn
from torch.utils.data import Dataset, Sampler
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainerState

from ia2.errors import IA2Error
from ia2.model.handle import ModelHandle
from ia2.model.taps import Tap
from ia2.registry import METHODS
from ia2.run.card import hub_metadata
from ia2.teacher.targets import model_fingerprint
from ia2.trainer.arguments import IA2Config
from ia2.trainer.examples import build, shape
from ia2.training.lanes import EpochOrder, Item
from ia2.training.loop import Objective, batch_loss
from ia2.training.methods import Stage
from ia2.training.stages import StageData


class Items(Dataset):
    """A stage's items as a map-style dataset (a batch is a list of them: `collate`)."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]


def collate(items: list[Item]) -> dict[str, list[Item]]:
    return {"items": items}


class _Through:
    """The model as ia2's loss code reads it (its attributes, its adapter switch) with its forward pass through the
    launcher's wrapper (DDP), so that gradients are synchronised."""

    def __init__(self, wrapper: nn.Module, model: nn.Module) -> None:
        self._wrapper, self._model = wrapper, model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class IA2Trainer(Trainer):
    """Trains `args.method` (IA2, SFT, IA2 → SFT, ...) on a PEFT causal LM, one `Trainer.train` per stage, each with a
    fresh optimizer, its own early stopping and best-state loading, and checkpoints under
    `output_dir/stage<i>-<loss>-<labels>`.

    `train_dataset` and `eval_dataset` are `datasets.Dataset`s (or lists of rows) of one shape: `prompt`/`completion`
    with `demonstrations`, conversational `messages`, or ia2's `question`/`answer`. The teacher is the same model with
    its adapter disabled; its targets are collected (and cached) when training starts.
    """

    def __init__(self, model: PeftModel, args: IA2Config, train_dataset: Any, eval_dataset: Any = None, **kwargs: Any):
        _check_setting(model, args, kwargs)
        fingerprint = model_fingerprint(_Base(model))  # first: checkpointing below rewrites the config's use_cache
        tokenizer = kwargs.pop("processing_class", None)
        if tokenizer is None:
            raise IA2Error("IA2Trainer: give the tokenizer as processing_class")
        if tokenizer.pad_token_id is None:  # as ia2 loads a model: padding is masked, its id only fills
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(
            model=model,
            args=args,
            data_collator=collate,
            processing_class=tokenizer,
            train_dataset=Items([]),
            eval_dataset=Items([]) if eval_dataset is not None else None,
            **kwargs,
        )
        self.rows = {"train": _rows(train_dataset, "train_dataset"), "eval": _rows(eval_dataset, "eval_dataset")}
        kinds = {shape(list(rows[0]), f"{name}_dataset") for name, rows in self.rows.items() if rows}
        if len(kinds) > 1:
            raise IA2Error(f"train_dataset and eval_dataset have different shapes: {', '.join(sorted(kinds))}")
        self.kind = kinds.pop()
        if args.activation_checkpointing:  # now, so that the memory check of the stage data counts it
            model.activation_checkpointing_enable(args.activation_checkpointing_kwargs)
        tap = Tap(model, args.site, tuple(args.layers) if args.layers else None)
        self.handle = ModelHandle(model, tokenizer, tap, fingerprint, type(model.get_base_model()).__name__)
        self.stage: Stage | None = None
        self.depth = 0
        self.stage_data: StageData | None = None

    def train(self, *args: Any, **kwargs: Any):
        """Collect the teacher's targets, then train each stage of the method in turn; returns the last stage's
        output."""
        stages = METHODS[self.args.method].stages
        if len(stages) > 1 and (args or kwargs.get("resume_from_checkpoint")):
            raise IA2Error(f"IA2Trainer: {self.args.method} trains {len(stages)} stages; resuming one is not supported")
        self.stage_data = build(self.rows["train"], self.rows["eval"], self.handle, self.args, self.kind)
        base, output = self.args.output_dir, None
        try:
            for depth, stage in enumerate(stages):
                self.stage, self.depth = stage, depth
                train, dev = self.stage_data.items[stage.labels]
                self.train_dataset = Items(train)
                if self.eval_dataset is not None:
                    self.eval_dataset = Items(dev)
                self.args.output_dir = os.path.join(base, f"stage{depth}-{stage.loss}-{stage.labels}")
                self.optimizer, self.lr_scheduler, self.state = None, None, TrainerState()
                _reset_early_stopping(self.callback_handler.callbacks)
                output = super().train(*args, **kwargs)
        finally:
            self.args.output_dir = base
        return output

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """The stage's ia2 loss on a batch of items. Under a launcher every trainable weight takes part, at zero
        weight: an activation loss leaves weights past the last aligned layer without a gradient, which DDP, finding
        them used by the logits, would wait for."""
        loss = batch_loss(self._objective(model), inputs["items"])
        if model is not self.handle.model:
            loss = loss + sum(0.0 * p.sum() for p in self.handle.model.parameters() if p.requires_grad)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: dict, prediction_loss_only: bool, ignore_keys=None):
        """The stage's loss on a dev batch (the Trainer averages it into `eval_loss`, which early stopping reads)."""
        with torch.no_grad():
            loss = batch_loss(self._objective(model), inputs["items"])
        return loss.detach(), None, None

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler:
        """Stage i of seed s draws its order from seed 1000 s + i, as ia2's own loop does."""
        n = len(train_dataset if train_dataset is not None else self.train_dataset)
        return EpochOrder(n, self.args.seed * 1000 + self.depth)

    def _objective(self, model: nn.Module) -> Objective:
        if self.stage is None:
            raise IA2Error("IA2Trainer: a stage's loss is computed inside train()")
        inner = self.handle.model
        forward = inner if model is inner else _Through(model, inner)
        return Objective(forward, self.handle.tap, self.stage, self.args.train_config(), self.handle.pad_id)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        **ignored: Any,
    ) -> None:
        """README.md in output_dir with the hub's metadata (`card`); what `push_to_hub` passes is kept."""
        if self.is_world_process_zero():
            text = card(self.handle.model, self.args.method, language, license, tags, dataset)
            ModelCard(text).save(os.path.join(self.args.output_dir, "README.md"))


def card(
    model: PeftModel,
    method: str,
    language: str | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
) -> str:
    """The card the hub reads: the base model, `library_name: peft`, tags naming ia2, the method and the paper (and
    any given), the license, language and dataset when given."""
    base = model.peft_config[model.active_adapter].base_model_name_or_path
    given = [tags] if isinstance(tags, str) else list(tags or [])
    datasets = [dataset] if isinstance(dataset, str) else dataset
    data = hub_metadata(base, method, datasets, given, license=license, language=language)
    title = f"# {METHODS[method].display} adapter for {base}\n\nTrained with ia2's `IA2Trainer`, method `{method}`.\n"
    return f"---\n{data.to_yaml()}\n---\n\n{title}"


class _Base:
    """The base model as ia2 fingerprints it before an adapter is added (the adapter's weights left out and PEFT's
    `base_layer` names undone), so that a teacher's cached targets do not depend on the adapter's initialisation."""

    def __init__(self, model: PeftModel) -> None:
        self.config, self._model = model.get_base_model().config, model

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        adapters = tuple(f".{name}." for name in self._model.peft_config)
        for name, param in self._model.get_base_model().named_parameters():
            if not any(a in f"{name}." for a in adapters):
                yield name.replace(".base_layer.", "."), param


def _check_setting(model: Any, args: Any, kwargs: dict) -> None:
    """What IA2Trainer trains: a PEFT causal LM, with an IA2Config, a fresh optimizer per stage, and one device per
    process (DataParallel's copies would escape the activation taps)."""
    _check_model(model)
    if not isinstance(args, IA2Config):
        raise IA2Error("IA2Trainer: args must be an IA2Config (transformers' TrainingArguments plus ia2's settings)")
    if any(part is not None for part in kwargs.get("optimizers", ())):
        raise IA2Error("IA2Trainer: each stage makes its own optimizer: set optim and learning_rate in IA2Config")
    if args.n_gpu > 1:
        raise IA2Error("IA2Trainer: one GPU per process: start several with accelerate launch or torchrun")
    if args.world_size > 1 and model.peft_config[model.active_adapter].is_prompt_learning:
        raise IA2Error("IA2Trainer: prompt and prefix tuning train in one process only (untested under a launcher)")


def _check_model(model: Any) -> None:
    """A PEFT-wrapped causal LM, or one clear line."""
    if not isinstance(model, PeftModel):
        raise IA2Error(f"IA2Trainer: model must be a PEFT model (peft.get_peft_model), not {type(model).__name__}")
    if not hasattr(model.get_base_model(), "lm_head") and not model.get_base_model().can_generate():
        raise IA2Error(f"IA2Trainer: the base model must be a causal LM, not {type(model.get_base_model()).__name__}")


def _rows(dataset: Any, name: str) -> list[dict]:
    """A dataset's rows as dicts (a `datasets.Dataset`, or any sequence of mappings); none for no dataset."""
    if dataset is None:
        return []
    rows = [dict(r) for r in dataset]
    if not rows:
        raise IA2Error(f"{name}: no rows")
    return rows


def _reset_early_stopping(callbacks: Sequence[TrainerCallback]) -> None:
    """A new stage starts its patience afresh."""
    for callback in callbacks:
        if isinstance(callback, EarlyStoppingCallback):
            callback.early_stopping_patience_counter = 0
