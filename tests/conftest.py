"""Shared fixtures: a locally trained word-level tokenizer, tiny random models of three architectures, toy JSONL tasks.

Nothing here touches the network. Model folders are session-scoped; loaded models are function-scoped because
`adapters.fresh` injects LoRA layers into the base model in place.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ia2.model import loading

# The cache outside the tests (where an embedded model may already be converted), before any test overrides it.
ORIGINAL_CACHE = Path(os.environ.get("IA2_CACHE", Path.home() / ".cache" / "ia2"))

# Tiny models: OpenMP threads only add synchronisation cost (100x on a busy 2-core machine).
torch.set_num_threads(1)

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "mouse", "lion", "frog", "bee"]
ADJECTIVES = ["big", "small", "red", "green", "fast", "slow", "happy", "sad", "loud", "quiet"]
LABELS = ("no", "yes")
ARCHS = ("llama", "qwen3", "gemma3")


def toy_rows(n: int = 60, seed: int = 0) -> list[dict]:
    """A toy yes/no task: 'is the [adjectives] <animal> <adjective>?' with alternating labels."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        adjectives = " ".join(rng.choice(ADJECTIVES) for _ in range(i % 3))  # questions of three lengths
        b, c = rng.choice(ANIMALS), rng.choice(ADJECTIVES)
        rows.append({"question": f"is the {adjectives} {b} {c}?".replace("  ", " "), "answer": LABELS[i % 2]})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written verbatim) as JSONL."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def small_run(model: Path | str, task: str, out: Path, *extra: str, **settings: object) -> list[str]:
    """`ia2 run` arguments of a small run (zero-shot, ICL and IA2; one seed; N = 4; 10 test examples; one epoch;
    a stage that ends where it began on dev recorded, not failed, as one or two steps on a tiny random model often
    do): `settings` by name override those or add flags (`max_epochs=3`), `extra` is appended as given."""
    small = {"methods": "zero-shot,icl,ia2", "n_train": 4, "seeds": 0, "n_test": 10, "max_epochs": 1}
    small = small | {"on_divergence": "record"} | settings
    flags = [item for name, value in small.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    return ["run", "--model", str(model), "--task", task, *flags, "--out", str(out), *extra]


def overwrite_in_place(path, count: int = 4000) -> None:
    """Overwrite the last `count` bytes of a safetensors file's data (or all of it, when shorter) with 0xFF: the file
    keeps its size and its header, so it still reads."""
    data = bytearray(path.read_bytes())
    start = max(8 + int.from_bytes(data[:8], "little"), len(data) - count)
    data[start:] = b"\xff" * (len(data) - start)
    path.write_bytes(bytes(data))


def _corpus() -> list[str]:
    words = ANIMALS + ADJECTIVES + ["is", "the", "a", "please", "maybe", "long"] + list(LABELS)
    text = []
    for w in words:
        # every word both after a space and at the start of a line, so both byte-level forms are in the vocabulary
        text.append(f"{w} {w}\n{w}\n\n{w}?")
    for r in toy_rows(200, seed=1):
        text.append(
            f"Question: {r['question']}\nAnswer: {r['answer']}\n\nQuestion: {r['question']}\nAnswer: yes please\n\n"
        )
    text.append("Question:\nAnswer:\n\n")
    return text


def build_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over byte-level pieces (so decoding is exact and ' yes' follows 'Answer:' cleanly)."""
    tok = Tokenizer(tok_models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    hf.save_pretrained(folder)
    return hf


def build_model(arch: str, tokenizer, max_positions: int = 512, layers: int = 2, hidden: int = 32):
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common))
    elif arch == "gemma3":
        # one sliding layer with a window shorter than the ICL prompts, one global layer, as in Gemma 3
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                **common,
                sliding_window=16,
                query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "full_attention"],
            )
        )
    else:
        raise ValueError(arch)
    return model


def make_model_folder(folder: Path, arch: str, max_positions: int = 512, layers: int = 2, hidden: int = 32) -> Path:
    tokenizer = build_tokenizer(folder)
    model = build_model(arch, tokenizer, max_positions, layers, hidden)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own ia2 cache, so nothing is read from or written to ~/.cache/ia2."""
    monkeypatch.setenv("IA2_CACHE", str(tmp_path_factory.mktemp("ia2cache")))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    return {arch: make_model_folder(tmp_path_factory.mktemp(f"tiny-{arch}"), arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def short_context_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose context (48 positions) is shorter than an ICL prompt with a few demos."""
    return make_model_folder(tmp_path_factory.mktemp("tiny-short"), "llama", max_positions=48)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def model_dir(model_dirs, arch) -> Path:
    return model_dirs[arch]


@pytest.fixture
def loaded(model_dir):
    """(model, tokenizer) freshly loaded through ia2.model.loading.load."""
    return loading.load(str(model_dir))


@pytest.fixture
def llama_dir(model_dirs) -> Path:
    return model_dirs["llama"]


@pytest.fixture(scope="session")
def toy_jsonl(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", toy_rows(60))


def toy_task_and_encoder(path: Path, tokenizer, model):
    """The toy JSONL task and its Encoder for a loaded model."""
    from ia2.data.prompts import Encoder
    from ia2.data.tasks import load_task

    task = load_task(f"jsonl:{path}")
    return task, Encoder(task, tokenizer, model.config.get_text_config().max_position_embeddings)


def icl_prompts(task, encoder, indices, pool, k: int, seed: int = 0) -> list[list[int]]:
    """Token ids of ICL prompts for `indices`, with k leave-one-out demos drawn from `pool`."""
    from ia2.data.prompts import draw_demos

    rng = random.Random(seed)
    ex = task.examples
    return [encoder.encode(ex[i], [ex[d] for d in draw_demos(pool, k, rng, exclude=i)]).prompt for i in indices]


def full_attn_outputs(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one unpadded sequence (batch of 1) with plain hooks on what every layer's attention adds to the residual:
    self_attn's output, or on Gemma 3 that of post_attention_layernorm, which it applies before the add.

    Returns (activations [L, S, H], logits [S, V]). Independent of ia2.model.taps.
    """
    outs: list[torch.Tensor] = []
    layers = model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers
    gemma = model.config.model_type.startswith("gemma3")
    handles = [
        (layer.post_attention_layernorm if gemma else layer.self_attn).register_forward_hook(
            lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).detach())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()
    return torch.stack([o[0] for o in outs]), logits


def every_method_on_every_arch(model_dirs, task: str, tmp_path_factory, name: str, **settings) -> dict:
    """One run of every method per tiny architecture on `task` (N = 4, 10 test examples, seed 0, 2 epochs unless
    `settings` say otherwise; divergence recorded, see `small_run`), in a cache of its own: {arch: (result, output
    folder)}."""
    from ia2 import config
    from ia2.run import experiment
    from ia2.training.methods import METHODS

    small = {"n_train": 4, "n_test": 10, "seeds": [0], "max_epochs": 2, "on_divergence": "record"} | settings
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_CACHE", str(tmp_path_factory.mktemp(f"{name}-cache")))
        for arch in ARCHS:
            cfg = config.make(str(model_dirs[arch]), task, methods=list(METHODS), **small)
            out = tmp_path_factory.mktemp(f"{name}-{arch}")
            runs[arch] = (experiment.run(cfg, out), out)
    return runs


@pytest.fixture
def declare():
    """Register declarations for one test (`declare(REGISTRY, name, item)`), withdrawn afterwards."""
    made = []

    def register(registry, name, item):
        made.append((registry, name))
        return registry.register(name, item)

    yield register
    for registry, name in made:
        registry.unregister(name)
