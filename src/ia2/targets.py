"""Teacher targets: the frozen model's ICL answers and its activations where it produces them, cached on disk."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .batching import forward, length_sorted_chunks, make_batch
from .paths import atomic_path, cache_root
from .taps import Tap


@dataclass
class Targets:
    """Per example: the teacher's greedy answer ŷ and activations [layers, |ŷ|, hidden] at the positions producing it.

    When the next-token distribution is kept, `top_logp` holds fp32 log-probs [|ŷ|, k] at the same positions and
    `top_ids` their token ids [|ŷ|, k]; `top_ids` is None when the whole vocabulary is kept (k = V).
    """

    tokens: list[list[int]]
    acts: list[torch.Tensor]
    top_ids: list[torch.Tensor] | None = None
    top_logp: list[torch.Tensor] | None = None


def model_fingerprint(model: nn.Module) -> str:
    """A cheap hash of a model's config and a slice of every weight: it changes when the weights do."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().reshape(-1)[:64].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _cut(tokens: list[int], tokenizer: PreTrainedTokenizerBase, stop: str, eos_ids: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS or the token that completes the stop string."""
    for i, token in enumerate(tokens):
        if token in eos_ids or (stop and stop in tokenizer.decode(tokens[: i + 1])):
            return tokens[: i + 1]
    return tokens


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: str) -> list[list[int]]:
    """Greedy answers for a batch of prompts, with the KV cache, cut at EOS or the stop string; generation ends as
    soon as every row has stopped."""
    batch = make_batch(prompts, [[0]] * len(prompts), tokenizer.pad_token_id, model.device.type)
    out = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=[stop] if stop else None,
        tokenizer=tokenizer,
    )
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    new = out[:, batch.input_ids.shape[1]:].tolist()
    return [_cut(row, tokenizer, stop, eos_ids) for row in new]


def distribution_at(logits: torch.Tensor, k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Next-token fp32 log-probs on the CPU from logits [T, V]: (None, all V) for k = 0, else the top k's (ids, log-probs)."""
    if k < 0:
        raise ValueError(f"distribution must be None, 0 (full vocabulary) or a top-k size k > 0, got {k}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    if k == 0:
        return None, logp.cpu()
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids.cpu(), values.cpu()


@torch.no_grad()
def collect(model: nn.Module, tap: Tap, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
            max_new_tokens: int = 1, stop: str = "\n\n", batch_size: int = 8, desc: str = "teacher",
            distribution: int | None = None) -> Targets:
    """Generate each ICL answer, then read activations in one teacher-forced pass over prompt ⊕ answer.

    With one new token the generating forward pass is the teacher-forced pass, so it runs once. `distribution`
    also keeps the teacher's next-token distribution from that pass: None no, 0 the full vocabulary (fp32, V floats
    per answer token: 1 MB each for Gemma's 262k vocabulary), k > 0 the top k.
    """
    tokens: list[list[int]] = [[] for _ in prompts]
    acts: list[torch.Tensor] = [torch.empty(0) for _ in prompts]
    top_ids: list[torch.Tensor | None] = [None for _ in prompts]
    top_logp: list[torch.Tensor] = [torch.empty(0) for _ in prompts]
    for chunk in tqdm(length_sorted_chunks([len(p) for p in prompts], batch_size), desc=desc, leave=False):
        chunk_prompts = [prompts[i] for i in chunk]
        if max_new_tokens == 1:
            batch = make_batch(chunk_prompts, [[0]] * len(chunk), tokenizer.pad_token_id, model.device.type)
            logits, chunk_acts = forward(model, batch, tap)
            answers = logits[:, -1].argmax(-1).unsqueeze(1).tolist()
        else:
            answers = generate(model, tokenizer, chunk_prompts, max_new_tokens, stop)
            batch = make_batch(chunk_prompts, answers, tokenizer.pad_token_id, model.device.type)
            logits, chunk_acts = forward(model, batch, tap)
        for row, i in enumerate(chunk):
            tokens[i] = answers[row]
            acts[i] = chunk_acts[row, :, chunk_acts.shape[2] - len(answers[row]):].float().cpu().clone()
            if distribution is not None:
                top_ids[i], top_logp[i] = distribution_at(logits[row, logits.shape[1] - len(answers[row]):], distribution)
    if distribution is None:
        return Targets(tokens, acts)
    return Targets(tokens, acts, top_ids if distribution > 0 else None, top_logp)


def cache_key(fields: dict, prompts: Sequence[Sequence[int]]) -> str:
    """Hash of everything the targets depend on: model, site, T, stop rule and the exact prompt token ids."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    digest.update(json.dumps([list(p) for p in prompts]).encode())
    return digest.hexdigest()[:24]


def save(path: Path, targets: Targets, fields: dict) -> None:
    """Write targets as one safetensors file (atomically), with the key's fields as metadata."""
    tensors = {}
    for i, (tok, act) in enumerate(zip(targets.tokens, targets.acts)):
        tensors[f"tokens.{i}"] = torch.tensor(tok, dtype=torch.long)
        tensors[f"acts.{i}"] = act.contiguous()
    for name in ("top_ids", "top_logp"):
        for i, tensor in enumerate(getattr(targets, name) or []):
            tensors[f"{name}.{i}"] = tensor.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"fields": json.dumps(fields, sort_keys=True), "n": str(len(targets.tokens))})


def load(path: Path) -> Targets:
    """Read targets written by `save`."""
    data = load_file(str(path))
    n = len([k for k in data if k.startswith("tokens.")])
    optional = {name: [data[f"{name}.{i}"] for i in range(n)] if f"{name}.0" in data else None
                for name in ("top_ids", "top_logp")}
    return Targets([data[f"tokens.{i}"].tolist() for i in range(n)], [data[f"acts.{i}"] for i in range(n)], **optional)


def cached_collect(model: nn.Module, tap: Tap, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                   fields: dict, max_new_tokens: int = 1, stop: str = "\n\n", batch_size: int = 8, desc: str = "teacher",
                   distribution: int | None = None) -> Targets:
    """`collect`, reusing targets cached under a hash of the prompts and `fields`, which must name the model
    (`model_fingerprint` of the base model) and may name task, split, seed and demo policy."""
    fields = {**fields, "site": tap.site, "max_new_tokens": max_new_tokens, "stop": stop}
    if not tap.all_layers:
        fields["layers"] = list(tap.layers)
    if distribution is not None:
        fields["distribution"] = distribution
    path = cache_root() / "targets" / f"{cache_key(fields, prompts)}.safetensors"
    if path.exists():
        return load(path)
    targets = collect(model, tap, tokenizer, prompts, max_new_tokens, stop, batch_size, desc, distribution)
    save(path, targets, fields)
    return targets
