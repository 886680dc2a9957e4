"""Teacher targets: the frozen model's ICL answers and its activations where it produces them, cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ia2.evaluation.scoring import label_scores
from ia2.model import distributed
from ia2.model.forward_pass import forward, length_sorted_chunks, make_batch
from ia2.model.generation import generate
from ia2.model.taps import Tap
from ia2.paths import cache_root, remove
from ia2.registry import SITES
from ia2.teacher.store import SHARD_BYTES, SHARD_SIZE, CorruptEntry, TargetStore
from ia2.teacher.store import write as store_write
from ia2.teacher.target_files import Targets, load, open_store, save

log = logging.getLogger(__name__)
# Config fields that say where and how it was loaded (its folder, the dtype asked for), not what the model is.
PATH_FIELDS = frozenset({"_name_or_path", "dtype", "torch_dtype"})


def _without_paths(config: object) -> object:
    """A config dict (and its sub-configs) without the fields naming where it was loaded from and in which dtype."""
    if isinstance(config, dict):
        return {k: _without_paths(v) for k, v in config.items() if k not in PATH_FIELDS}
    return config


def model_fingerprint(model: nn.Module) -> str:
    """A cheap hash of a model's config and a slice of every weight (at bfloat16 precision): it changes when the
    weights do, not when the model folder or the cache holding it moves, nor with the dtype it is loaded in."""
    config = _without_paths(json.loads(model.config.to_json_string(use_diff=False)))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().reshape(-1)[:64].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def distribution_at(logits: torch.Tensor, k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Next-token fp32 log-probs on the CPU from logits [T, V]: (None, all V) for k = 0, else the top k's (ids,
    log-probs)."""
    if k < 0:
        raise ValueError(f"distribution must be None, 0 (full vocabulary) or a top-k size k > 0, got {k}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    if k == 0:
        return None, logp.cpu()
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids.cpu(), values.cpu()


@dataclass
class TeacherRow:
    """One example's teacher output as collected: its index, answer tokens, activations [layers, |ŷ|, hidden] (None
    without a tap) and next-token distribution (see `Targets`)."""

    index: int
    tokens: list[int]
    acts: torch.Tensor | None
    top_ids: torch.Tensor | None = None
    top_logp: torch.Tensor | None = None


@dataclass(frozen=True)
class CollectSettings:
    """How teacher targets are collected: answers of up to `max_new_tokens` cut at `stop`, or with `choices` (the
    labels' token ids) the label scored highest as a whole sequence (`label_score`, see
    `ia2.evaluation.scoring.label_scores`), in batches of `batch_size` (progress bar `desc`), keeping the next-token
    `distribution` (None no, 0 the full vocabulary, k > 0 the top k)."""

    max_new_tokens: int = 1
    stop: str = "\n\n"
    batch_size: int = 8
    desc: str = "teacher"
    distribution: int | None = None
    choices: Sequence[Sequence[int]] | None = None
    label_score: str = "sum"

    def __post_init__(self) -> None:
        if self.choices is not None:  # any sequences of token ids, kept as tuples (hashable, as the key records them)
            object.__setattr__(self, "choices", tuple(tuple(c) for c in self.choices))


@torch.no_grad()
def rows(
    model: nn.Module,
    tap: Tap | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    settings: CollectSettings = CollectSettings(),
) -> Iterator[TeacherRow]:
    """`collect`'s work one example at a time, in length-sorted batch order, so a caller can write them as they come.

    Without a tap and a distribution, multi-token answers are only generated (no teacher-forced pass). With several
    processes each computes every world_size-th batch, exactly as one process would, and every process yields every
    row in the same order, one round of batches at a time.
    """
    chunks = length_sorted_chunks([len(p) for p in prompts], settings.batch_size)
    for chunk_rows in distributed.map_batches(
        model, chunks, lambda chunk: _chunk_rows(model, tap, tokenizer, prompts, chunk, settings), settings.desc
    ):
        yield from chunk_rows


def _chunk_rows(
    model: nn.Module,
    tap: Tap | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    chunk: list[int],
    settings: CollectSettings,
) -> list[TeacherRow]:
    """The rows of one batch of examples (indices `chunk` into `prompts`)."""
    chunk_prompts, distribution = [prompts[i] for i in chunk], settings.distribution
    if settings.max_new_tokens == 1 and settings.choices is None:
        batch = make_batch(chunk_prompts, [[0]] * len(chunk), tokenizer.pad_token_id, model.device.type)
        logits, chunk_acts = forward(model, batch, tap)
        answers = logits[:, -1].argmax(-1).unsqueeze(1).tolist()
    else:
        answers = _answers(model, tokenizer, chunk_prompts, settings)
        if tap is None and distribution is None:
            return [TeacherRow(i, answers[row], None) for row, i in enumerate(chunk)]
        batch = make_batch(chunk_prompts, answers, tokenizer.pad_token_id, model.device.type)
        logits, chunk_acts = forward(model, batch, tap)
    out = []
    host_acts = (
        None if chunk_acts is None else chunk_acts.float().cpu()
    )  # one device-to-host copy per batch, not per row
    for row, i in enumerate(chunk):
        out.append(TeacherRow(i, answers[row], None))
        if host_acts is not None:
            out[-1].acts = host_acts[row, :, host_acts.shape[2] - len(answers[row]) :].clone()
        if distribution is not None:
            out[-1].top_ids, out[-1].top_logp = distribution_at(
                logits[row, logits.shape[1] - len(answers[row]) :], distribution
            )
    return out


def _answers(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]], settings: CollectSettings
) -> list[list[int]]:
    """The teacher's answers: with `choices`, the tokens of the label it scores highest as a whole sequence; else
    its greedy generation."""
    if settings.choices is None:
        return generate(model, tokenizer, prompts, settings.max_new_tokens, settings.stop)
    pad = tokenizer.pad_token_id
    logits, _ = forward(model, make_batch(prompts, [[0]] * len(prompts), pad, model.device.type))
    next_logp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
    best = label_scores(model, prompts, next_logp, settings.choices, pad, settings.label_score).argmax(axis=1)
    return [list(settings.choices[c]) for c in best]


def collect(
    model: nn.Module,
    tap: Tap | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    settings: CollectSettings = CollectSettings(),
) -> Targets:
    """Generate each ICL answer (or, with `choices`, pick the label scored highest), then read activations in one
    teacher-forced pass over prompt ⊕ answer.

    With one new token the generating forward pass is the teacher-forced pass, so it runs once. The settings'
    `distribution` also keeps the teacher's next-token distribution from that pass: None no, 0 the full vocabulary
    (fp32, V floats per answer token: 1 MB each for Gemma's 262k vocabulary), k > 0 the top k. Without a tap, `acts`
    are None.
    """
    done = sorted(rows(model, tap, tokenizer, prompts, settings), key=lambda r: r.index)
    tokens, acts, distribution = [r.tokens for r in done], [r.acts for r in done], settings.distribution
    if distribution is None:
        return Targets(tokens, acts)
    return Targets(tokens, acts, [r.top_ids for r in done] if distribution > 0 else None, [r.top_logp for r in done])


def cache_key(fields: dict, prompts: Sequence[Sequence[int]]) -> str:
    """Hash of everything the targets depend on: model, site, T, stop rule and the exact prompt token ids."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    digest.update(json.dumps([list(p) for p in prompts]).encode())
    return digest.hexdigest()[:24]


def key_fields(fields: dict, tap: Tap | None, settings: CollectSettings, dtype: str = "float32") -> dict:
    """The cache key's fields: the caller's, the tap's site and layers (or no activations), T, the stop rule, the
    distribution kept, the label choices and their scoring when answers are picked from them, and a non-default
    activation dtype (fp32 keys are those of earlier versions).

    A site that reads a sublayer's output norm (`attn` and `mlp` on Gemma 3) also names that module, so targets
    cached when those sites read the output before the norm are never reused; other keys are unchanged.
    """
    fields = {**fields, "max_new_tokens": settings.max_new_tokens, "stop": settings.stop}
    if tap is None:
        fields["activations"] = False
    else:
        fields["site"] = tap.site
        if tap.module != SITES[tap.site][0]:
            fields["module"] = tap.module
        if not tap.all_layers:
            fields["layers"] = list(tap.layers)
    if settings.distribution is not None:
        fields["distribution"] = settings.distribution
    if settings.choices is not None:
        fields["choices"], fields["label_score"] = [list(c) for c in settings.choices], settings.label_score
    if dtype != "float32":
        fields["dtype"] = dtype
    return fields


def cached(root: Path, key: str) -> Targets | None:
    """A cache entry in either format, or None: one file `<key>.safetensors` (loaded wholly) or a store `<key>/`.

    A corrupt entry (a truncated file, a missing shard) is logged, removed and reported as None, so the caller
    recomputes it instead of every later run failing on it.
    """
    try:
        if (root / f"{key}.safetensors").exists():
            return load(root / f"{key}.safetensors")
        if TargetStore.exists(root / key):
            return open_store(root / key)
    except CorruptEntry as exc:
        log.warning("%s; recomputing", exc)
        remove(exc.path)
    return None


def _tensors(row: TeacherRow, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A row's tensors as a store keeps them: activations in `dtype`, distributions as collected."""
    out = {} if row.acts is None else {"acts": row.acts.to(dtype)}
    return out | {name: getattr(row, name) for name in ("top_ids", "top_logp") if getattr(row, name) is not None}


def write_store(
    folder: Path,
    collected: Iterable[TeacherRow],
    n: int,
    fields: dict,
    dtype: str = "float32",
    shard_size: int = SHARD_SIZE,
    shard_bytes: int = SHARD_BYTES,
) -> None:
    """Write n collected rows (from `rows`, as they come) as a shard store, activations in `dtype`."""
    stream = ((r.index, r.tokens, _tensors(r, getattr(torch, dtype))) for r in collected)
    store_write(folder, stream, n, {"fields": fields, "dtype": dtype}, shard_size, shard_bytes)


def cached_collect(
    model: nn.Module,
    tap: Tap | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    fields: dict,
    settings: CollectSettings = CollectSettings(),
    *,
    dtype: str = "float32",
    store: str = "file",
) -> Targets:
    """`collect`, reusing targets cached under a hash of the prompts and `fields`, which must name the model
    (`model_fingerprint` of the base model) and may name task, split, seed and demo policy.

    `dtype` stores activations as float32 or, halving disk and memory, bfloat16 (recommended for long answers;
    training casts them back to fp32). `store` "file" writes one safetensors file, loaded wholly into memory;
    "shards" writes a `store` folder shard by shard during collection and returns lazy references, so neither
    collection nor training holds more than a few batches of activations (use it for large N × T). An entry of
    either format is reused whichever is asked for. Without a tap only answers (and distributions) are kept.

    With several processes (sharing the cache folder) each collects its share of the batches, the main process
    alone writes the entry, and every process returns all the targets.
    """
    fields = key_fields(fields, tap, settings, dtype)
    root, key = cache_root() / "targets", cache_key(fields, prompts)
    found = cached(root, key)
    if distributed.agree(found is not None):
        found.key = key
        return found
    if store == "shards":
        collected = rows(model, tap, tokenizer, prompts, settings)
        if distributed.is_main():
            write_store(root / key, collected, len(prompts), fields, dtype)
        else:
            deque(collected, maxlen=0)
        distributed.barrier()
        stored = open_store(root / key)
        stored.key = key
        return stored
    targets = collect(model, tap, tokenizer, prompts, settings)
    if dtype != "float32":
        targets.acts = [None if a is None else a.to(getattr(torch, dtype)) for a in targets.acts]
    if distributed.is_main():
        save(root / f"{key}.safetensors", targets, fields)
    distributed.barrier()
    targets.key = key
    return targets
