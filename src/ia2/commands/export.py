"""`ia2 export`: a saved adapter merged into its base model's weights, as a plain model folder that
`AutoModelForCausalLM.from_pretrained` loads alone (for serving engines that take whole models)."""

from __future__ import annotations

from pathlib import Path

from ia2.config import adapter_kinds
from ia2.errors import IA2Error
from ia2.paths import atomic_path, check_output
from ia2.run import lock

DTYPES = ("float32", "bfloat16", "float16")


def merged(adapter: Path, out: Path, dtype: str = "float32", base_model: str | None = None) -> Path:
    """Merge the adapter into its base model (as the adapter names it, or from `base_model`, checked to have the
    weights it was trained on) in fp32, cast to `dtype`, and write the model and tokenizer to `out` atomically;
    LoRA and IA3 only (prompt-learning adapters are served unmerged)."""
    if dtype not in DTYPES:
        raise IA2Error(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from ia2.run import saved

    spec = saved.adapter_config(adapter)
    record = saved.load_record(adapter)
    kind = spec["peft_type"]
    if not adapter_kinds.merges(kind):
        raise IA2Error(f"{adapter}: a {kind} adapter cannot be merged into the weights; serve it unmerged")
    check_output(out, folder=True)
    if out.exists():
        raise IA2Error(f"{out}: already exists; export into a new folder")
    import torch

    with lock.holding([lock.beside(out)]):
        peft, tokenizer = saved.on_base(adapter, {**record, "dtype": "float32"}, base_model)  # merged in fp32
        model = peft.merge_and_unload().to(getattr(torch, dtype))
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return out
