"""Subspace overlap on real PEFT adapters with known update subspaces, layer similarity, and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ia2.errors import IA2Error
from ia2.reporting import analysis, plots

HIDDEN, RANK = 64, 8
PROJS = ("q_proj", "v_proj")
MODULES = {(layer, proj) for layer in range(2) for proj in PROJS}


def eye_cols(cols) -> np.ndarray:
    """Columns of the 64×64 identity: the basis of span{e_c : c in cols}."""
    return np.eye(HIDDEN)[:, list(cols)]


def save_adapter(folder: Path, spans: dict, seed: int) -> Path:
    """A real PEFT LoRA adapter on a tiny Llama whose ΔW = B·A has, per module, the column space `spans[module]`.

    B = basis · M with a random mixing M (so weights differ between adapters sharing a subspace), A random.
    A module missing from `spans` keeps B = 0.
    """
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, target_modules=list(PROJS)))
    rng = np.random.default_rng(seed)
    for layer, block in enumerate(peft_model.base_model.model.model.layers):
        for proj in PROJS:
            module = getattr(block.self_attn, proj)
            basis = spans.get((layer, proj))
            b = np.zeros((HIDDEN, RANK)) if basis is None else basis @ rng.standard_normal((basis.shape[1], RANK))
            module.lora_B["default"].weight.data = torch.tensor(b, dtype=torch.float32)
            a = rng.standard_normal((RANK, HIDDEN))
            module.lora_A["default"].weight.data = torch.tensor(a, dtype=torch.float32)
    peft_model.save_pretrained(folder)
    return folder


def uniform(cols) -> dict:
    return {m: eye_cols(cols) for m in MODULES}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    low, high = range(8), range(8, 16)
    half = [0, 1, 2, 3, 8, 9, 10, 11]
    mixed = {m: eye_cols(low if m[0] == 0 else high) for m in MODULES}
    specs = {
        "a": (uniform(low), 1),
        "same": (uniform(low), 2),
        "orth": (uniform(high), 3),
        "half": (uniform(half), 4),
        "rank4": (uniform(range(4)), 5),
        "mixed": (mixed, 6),
        "untrained": ({}, 7),
    }
    return {name: save_adapter(root / name, spans, seed) for name, (spans, seed) in specs.items()}


def test_lora_bases_span_the_update(adapters):
    bases = analysis.lora_bases(adapters["a"])
    assert set(bases) == MODULES
    for u in bases.values():
        assert u.shape == (HIDDEN, RANK)
        np.testing.assert_allclose(u.T @ u, np.eye(RANK), atol=1e-10)
        np.testing.assert_allclose(np.abs(u[8:]).max(), 0.0, atol=1e-6)  # inside span{e_0..e_7}


def test_lora_bases_drop_directions_the_update_lacks(adapters):
    assert {u.shape for u in analysis.lora_bases(adapters["rank4"]).values()} == {(HIDDEN, 4)}
    assert {u.shape for u in analysis.lora_bases(adapters["untrained"]).values()} == {(HIDDEN, 0)}


@pytest.mark.parametrize(("other", "want"), [("same", 1.0), ("orth", 0.0), ("half", 0.5), ("rank4", 0.5)])
def test_adapter_overlap_known_subspaces(adapters, other, want):
    result = analysis.adapter_overlap(adapters["a"], adapters[other])
    assert result["mean"] == pytest.approx(want, abs=1e-6)
    assert len(result["modules"]) == len(MODULES)
    for m in result["modules"]:
        assert m["overlap"] == pytest.approx(want, abs=1e-6)
        assert (m["dim"], m["rank"]) == (HIDDEN, RANK)


def test_adapter_overlap_per_module(adapters):
    result = analysis.adapter_overlap(adapters["a"], adapters["mixed"])
    per_module = {(m["layer"], m["projection"]): m["overlap"] for m in result["modules"]}
    assert per_module == pytest.approx(
        {(0, "q_proj"): 1.0, (0, "v_proj"): 1.0, (1, "q_proj"): 0.0, (1, "v_proj"): 0.0}, abs=1e-6
    )
    assert [(m["layer"], m["projection"]) for m in result["modules"]] == sorted(MODULES)
    assert result["mean"] == pytest.approx(0.5, abs=1e-6)


def test_adapter_overlap_of_an_untrained_adapter_fails(adapters):
    with pytest.raises(IA2Error, match="zero"):
        analysis.adapter_overlap(adapters["a"], adapters["untrained"])


def test_overlap_symmetric_and_bounded():
    rng = np.random.default_rng(0)
    for r1, r2 in [(8, 8), (3, 8), (8, 1)]:
        u1, u2 = np.linalg.qr(rng.standard_normal((32, r1)))[0], np.linalg.qr(rng.standard_normal((32, r2)))[0]
        value = analysis.subspace_overlap(u1, u2)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(analysis.subspace_overlap(u2, u1), abs=1e-12)
    assert analysis.subspace_overlap(u1, u1) == pytest.approx(1.0)


def test_random_overlap_is_r_over_d():
    assert analysis.random_overlap(64, 8, samples=400, seed=0) == pytest.approx(8 / 64, abs=0.01)
    assert analysis.random_overlap(64, 64, samples=2) == pytest.approx(1.0)
    with pytest.raises(IA2Error):
        analysis.random_overlap(8, 9)


def test_layer_similarity_mean_std_over_seeds():
    rows = [
        {"method": "icl", "seed": 0, "asim_layers": None},
        {"method": "sft", "seed": 0, "asim_layers": [0.5, 0.7]},
        {"method": "sft", "seed": 1, "asim_layers": [0.7, 0.9]},
        {"method": "ia2", "seed": 0, "asim_layers": [0.9, 1.0]},
    ]
    agg = analysis.layer_similarity(rows)
    assert list(agg) == ["sft", "ia2"]
    assert agg["sft"]["mean"] == pytest.approx([0.6, 0.8]) and agg["sft"]["std"] == pytest.approx([0.02**0.5] * 2), (
        "sample std (ddof 1)"
    )
    assert agg["sft"]["n"] == 2 and agg["ia2"] == {"mean": [0.9, 1.0], "std": [0.0, 0.0], "n": 1}
    with pytest.raises(IA2Error, match="layer counts"):
        analysis.layer_similarity(rows + [{"method": "sft", "seed": 2, "asim_layers": [0.1]}])


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def cell(method: str, n: int, acc: float, std: float) -> dict:
    return {
        "model": "m",
        "task": "t",
        "eval_task": "t",
        "n_train": n,
        "method": method,
        "accuracy_mean": acc,
        "accuracy_std": std,
        "ece_mean": None,
        "ece_std": None,
        "n_seeds": 3,
    }


def test_plot_accuracy_vs_n(tmp_path):
    cells = [cell(m, n, 0.5 + 0.01 * n, 0.02) for m in ("sft", "ia2-sft") for n in (2, 4, 8, 16)]
    plots.plot_accuracy_vs_n(cells, tmp_path / "acc.png")
    assert_png(tmp_path / "acc.png")
    with pytest.raises(IA2Error, match="nothing to plot"):
        plots.plot_accuracy_vs_n(cells, tmp_path / "ece.png", metric="ece")
    with pytest.raises(IA2Error, match="settings"):
        plots.plot_accuracy_vs_n(cells + [{**cells[0], "task": "u"}], tmp_path / "mixed.png")


def test_plot_layer_similarity(tmp_path):
    agg = {
        "sft": {"mean": [0.5, 0.6, 0.7], "std": [0.1, 0.1, 0.05], "n": 3},
        "ia2": {"mean": [0.9, 0.95, 0.97], "std": [0.01, 0.02, 0.01], "n": 3},
    }
    plots.plot_layer_similarity(agg, tmp_path / "layers.png")
    assert_png(tmp_path / "layers.png")
    with pytest.raises(IA2Error, match="nothing to plot"):
        plots.plot_layer_similarity({}, tmp_path / "none.png")


def test_plot_reliability(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 200)
    per_method = {"sft": (conf, (rng.uniform(size=200) < conf).astype(float)), "ia2": (conf, np.ones(200))}
    plots.plot_reliability(per_method, tmp_path / "rel.png")
    assert_png(tmp_path / "rel.png")
    with pytest.raises(IA2Error, match="nothing to plot"):
        plots.plot_reliability({}, tmp_path / "none.png")
    with pytest.raises(IA2Error, match="nothing to plot"):
        plots.plot_reliability({"sft": (np.array([]), np.array([]))}, tmp_path / "none.png")


def test_plot_overlap(tmp_path):
    plots.plot_overlap({"SFT vs IA2": [0.05, 0.06], "IA2 vs IA2 → SFT": [0.4, 0.2, 0.5]}, 0.125, tmp_path / "ov.png")
    assert_png(tmp_path / "ov.png")
    with pytest.raises(IA2Error, match="nothing to plot"):
        plots.plot_overlap({}, 0.1, tmp_path / "none.png")
