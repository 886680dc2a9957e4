"""Greedy generation with the KV cache, cut by the task's stop rule applied to the generated tokens only: teacher
answers and the answers of generative tasks under evaluation are cut alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from ia2.data.tasks import Task
from ia2.model import distributed
from ia2.model.forward_pass import length_sorted_chunks, make_batch


def _cut(tokens: list[int], tokenizer: PreTrainedTokenizerBase, stop: str, eos_ids: set[int]) -> list[int]:
    """Keep generated tokens up to and including the first EOS or the token that completes the stop string in the
    generated text (the prompt's end never counts towards it)."""
    for i, token in enumerate(tokens):
        if token in eos_ids or (stop and stop in tokenizer.decode(tokens[: i + 1])):
            return tokens[: i + 1]
    return tokens


class StopInGenerated(StoppingCriteria):
    """Stops a row once the text it generated contains the stop string, so that a row stops where it stops alone:
    transformers' `stop_strings` also matches across the prompt's end (a prompt ending in "\n", stop "\n\n")."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: str, prompt_width: int) -> None:
        self.tokenizer, self.stop, self.width, self.done = tokenizer, stop, prompt_width, None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor | None, **kwargs: object) -> torch.BoolTensor:
        """Per row, whether its generated text contains the stop string; rows found done are not decoded again."""
        if self.done is None:
            self.done = [False] * input_ids.shape[0]
        for row, tokens in enumerate(input_ids[:, self.width :].tolist()):
            self.done[row] = self.done[row] or self.stop in self.tokenizer.decode(tokens)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: str,
) -> list[list[int]]:
    """Greedy answers for a batch of prompts, with the KV cache, cut at EOS or the stop string in the generated text,
    so each row is what it is alone; generation ends as soon as every row has stopped (with a sharded model, every
    row of every process: each step is a collective)."""
    batch = make_batch(prompts, [[0]] * len(prompts), tokenizer.pad_token_id, model.device.type)
    width = batch.input_ids.shape[1]
    out = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([StopInGenerated(tokenizer, stop, width)] if stop else []),
        synced_gpus=distributed.sharded(model),
    )
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return [_cut(row, tokenizer, stop, eos_ids) for row in out[:, width:].tolist()]


def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    task: Task,
    batch_size: int = 8,
    desc: str = "generate",
) -> list[str]:
    """Greedy answers of a generative task, cut at its stop rule exactly as teacher answers are, as text (with
    several processes, each generates every world_size-th batch and every process returns all answers)."""
    answers: list[list[int]] = [[] for _ in prompts]
    stop = task.stop[0] if task.stop else ""
    chunks = length_sorted_chunks([len(p) for p in prompts], batch_size)
    generated = distributed.map_batches(
        model,
        chunks,
        lambda chunk: generate(model, tokenizer, [prompts[i] for i in chunk], task.max_new_tokens, stop),
        desc,
    )
    for chunk, rows in zip(chunks, generated):
        for i, tokens in zip(chunk, rows):
            answers[i] = tokens
    return [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
