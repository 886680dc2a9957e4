"""`ia2 export`: a saved adapter merged into its base model loads with transformers alone and scores the labels as
the unmerged adapter does; what cannot be merged or found is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import toy_task_and_encoder
from ia2.commands import cli
from ia2.data.tasks import Task
from ia2.evaluation.scoring import score
from ia2.model import adapters, loading
from ia2.run.card import rendering
from ia2.teacher.targets import model_fingerprint

# fp32 merge: the same products summed in another order; bf16: the weights rounded to 8 bits of mantissa.
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}


def _saved(model_dir, kind: str, folder):
    """A perturbed adapter (LoRA and IA3 start as the identity) saved as a run saves it, with its record."""
    model, tok = loading.load(str(model_dir))
    record = {
        "base_model": str(model_dir),
        "base_fingerprint": model_fingerprint(model),
        "dtype": "float32",
        "task": rendering(Task("t", (), labels=("no", "yes"))),
        "chat": False,
        "train_examples": [],
    }
    peft = adapters.fresh(model, kind, 0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    adapters.save(peft, folder, str(model_dir), {"README.md": "# card\n", "ia2.json": json.dumps(record)})
    return tok


def _label_probs(model, tok, toy_jsonl):
    task, encoder = toy_task_and_encoder(toy_jsonl, tok, model)
    prompts = [encoder.encode(e).prompt for e in task.examples[:8]]
    return score(model, prompts, encoder.label_ids, tok.pad_token_id).label_probs()


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_model_loads_alone_and_scores_as_the_adapter(model_dirs, toy_jsonl, tmp_path, kind, dtype, capsys):
    model_dir = model_dirs["llama"]
    tok = _saved(model_dir, kind, tmp_path / "adapter")
    assert cli.main(["export", str(tmp_path / "adapter"), "--merged", str(tmp_path / "merged"), "--dtype", dtype]) == 0
    assert "merged model written to" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert {p.dtype for p in merged.parameters()} == {getattr(torch, dtype)}
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters()), "no adapter layers left"
    base, _ = loading.load(str(model_dir))
    unmerged = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    want = _label_probs(unmerged, tok, toy_jsonl)
    untrained = _label_probs(loading.load(str(model_dir))[0], tok, toy_jsonl)
    assert abs(want - untrained).max() > 10 * TOLERANCE[dtype], "setup: the adapter changes the label probabilities"
    got = _label_probs(merged.float(), tok, toy_jsonl)
    assert abs(got - want).max() < TOLERANCE[dtype]


def test_what_cannot_be_exported_is_one_line(model_dirs, tmp_path, capsys):
    _saved(model_dirs["llama"], "prompt", tmp_path / "prompt")
    _saved(model_dirs["llama"], "lora", tmp_path / "lora")
    (tmp_path / "taken").mkdir()
    capsys.readouterr()
    cases = [
        (tmp_path / "prompt", tmp_path / "out", "a PROMPT_TUNING adapter cannot be merged"),
        (tmp_path / "nowhere", tmp_path / "out", "no such adapter folder"),
        (tmp_path, tmp_path / "out", "not a saved adapter (no adapter_config.json)"),
        (tmp_path / "lora", tmp_path / "taken", "already exists"),
    ]
    for adapter, out, needle in cases:
        assert cli.main(["export", str(adapter), "--merged", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()
