"""Where methods move the model: LoRA update subspaces, their overlap, and per-layer similarity to ICL activations."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from ia2.errors import IA2Error
from ia2.evaluation import metrics

# e.g. base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight (any prefix, any module path inside the layer)
_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:.*\.)?(\w+_proj)\.lora_([AB])\b")

Module = tuple[int, str]


class EmptySubspace(IA2Error):
    """An adapter whose update B·A is zero (early stopping kept its initial state): it spans no subspace."""


def _lora_factors(adapter_dir: Path) -> dict[Module, dict[str, np.ndarray]]:
    """The fp64 A and B matrices of each (layer, projection) in a PEFT LoRA folder."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise IA2Error(f"{adapter_dir} is not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    factors: dict[Module, dict[str, np.ndarray]] = {}
    for key, tensor in load_file(adapter_dir / "adapter_model.safetensors").items():
        match = _LORA_KEY.search(key)
        if match is None:
            continue
        slot = factors.setdefault((int(match[1]), match[2]), {})
        if match[3] in slot:
            raise IA2Error(f"{adapter_dir}: two lora_{match[3]} matrices for layer {match[1]} {match[2]}")
        slot[match[3]] = tensor.double().numpy()
    if not factors:
        raise IA2Error(f"{adapter_dir}: no LoRA weights under layers.<i>.<...>_proj")
    return factors


def update_basis(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Orthonormal basis (out × rank) of the column space of ΔW = B·A, via QRs of the thin factors (never out × in)."""
    qb, rb = np.linalg.qr(b)
    ra = np.linalg.qr(a.T, mode="r")
    u, s, _ = np.linalg.svd(rb @ ra.T)
    tol = s.max(initial=0.0) * max(b.shape[0], a.shape[1]) * np.finfo(np.float64).eps
    return qb @ u[:, s > tol]


def lora_bases(adapter_dir: Path) -> dict[Module, np.ndarray]:
    """Per (layer, projection): left singular vectors of ΔW = B·A with non-zero singular values (r once trained)."""
    bases = {}
    for module, pair in sorted(_lora_factors(Path(adapter_dir)).items()):
        if set(pair) != {"A", "B"}:
            raise IA2Error(f"{adapter_dir}: layer {module[0]} {module[1]} has lora_{''.join(pair)} only")
        bases[module] = update_basis(pair["B"], pair["A"])
    return bases


def subspace_overlap(u1: np.ndarray, u2: np.ndarray) -> float:
    """(1/r)·‖U1ᵀU2‖_F², the mean squared cosine of the principal angles; r is the larger rank, so it lies in [0, 1]."""
    if u1.shape[0] != u2.shape[0]:
        raise IA2Error(f"subspaces of different spaces: R^{u1.shape[0]} and R^{u2.shape[0]}")
    if min(u1.shape[1], u2.shape[1]) == 0:
        raise EmptySubspace("an empty subspace: ΔW = B·A is zero (an untrained adapter?)")
    r = max(u1.shape[1], u2.shape[1])
    return float(np.clip(np.sum((u1.T @ u2) ** 2) / r, 0.0, 1.0))


def adapter_overlap(dir1: Path, dir2: Path) -> dict:
    """Subspace overlap of two adapters per (layer, projection), with its mean: {"modules": [...], "mean": float}."""
    b1, b2 = lora_bases(dir1), lora_bases(dir2)
    if b1.keys() != b2.keys():
        raise IA2Error(
            f"adapters adapt different modules: only in {dir1}: {sorted(b1.keys() - b2.keys())}, "
            f"only in {dir2}: {sorted(b2.keys() - b1.keys())}"
        )
    modules = [
        {
            "layer": layer,
            "projection": proj,
            "dim": b1[layer, proj].shape[0],
            "rank": max(b1[layer, proj].shape[1], b2[layer, proj].shape[1]),
            "overlap": subspace_overlap(b1[layer, proj], b2[layer, proj]),
        }
        for layer, proj in b1
    ]
    return {"modules": modules, "mean": float(np.mean([m["overlap"] for m in modules]))}


def random_overlap(d: int, r: int, samples: int = 200, seed: int = 0) -> float:
    """Mean overlap of pairs of uniformly random r-dim subspaces of R^d (expected r/d): the chance level."""
    if not 1 <= r <= d or samples < 1:
        raise IA2Error(f"need 1 <= r <= d and samples >= 1, got d={d}, r={r}, samples={samples}")
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        return np.linalg.qr(rng.standard_normal((d, r)))[0]

    return float(np.mean([subspace_overlap(draw(), draw()) for _ in range(samples)]))


def layer_similarity(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method, mean and sample std over rows (seeds) of each layer's cosine similarity to ICL: {method: {mean, std,
    n}}."""
    per_method: dict[str, list[list[float]]] = {}
    for row in rows:
        if row.get("asim_layers") is not None:
            per_method.setdefault(row["method"], []).append(row["asim_layers"])
    out = {}
    for method, values in per_method.items():
        if len({len(v) for v in values}) > 1:
            raise IA2Error(f"{method}: rows have different layer counts {sorted({len(v) for v in values})}")
        arr = np.asarray(values, dtype=np.float64)
        out[method] = {"mean": arr.mean(axis=0).tolist(), "std": metrics.sample_std(arr).tolist(), "n": len(values)}
    return out
