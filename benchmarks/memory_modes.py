"""Estimated peak memory of a training step by mode (bf16 base, NF4 base, each with and without activation
checkpointing) at the shapes of Qwen3-4B and Llama-3-8B, from ia2's own estimate of a pass (`ia2.model.memory`):
the weights plus the step's activations; the LoRA adapter (r 8 on q, k, o) and its Adam state are a few MB.

    python benchmarks/memory_modes.py --rows 4 --width 512
"""

from __future__ import annotations

import argparse

from ia2.model.memory import Shape, gib, peak_bytes

# (layers, hidden, intermediate, heads, kv heads, head dim, vocabulary, parameters, embedding matrices)
MODELS = {
    "Qwen3-4B": (36, 2560, 9728, 32, 8, 128, 151936, 4.02e9, 1),  # input and output embeddings tied
    "Llama-3-8B": (32, 4096, 14336, 32, 8, 128, 128256, 8.03e9, 2),
}
# Bytes per weight: bf16; NF4 (4 bits, one fp32 absmax per 64 weights, the embeddings and head kept in bf16).
WEIGHTS = {"bf16": lambda p, emb: 2 * p, "nf4": lambda p, emb: 0.5625 * (p - emb) + 2 * emb}


def table(rows: int, width: int) -> str:
    """The markdown table: one line per model and mode."""
    lines = ["| model | base | checkpointing | weights | activations | total |", "|---|---|---|---|---|---|"]
    for name, (layers, hidden, inter, heads, kv, head_dim, vocab, params, matrices) in MODELS.items():
        embeddings = matrices * vocab * hidden
        for base, weight in WEIGHTS.items():
            for checkpointed in (False, True):
                shape = Shape(layers, hidden, inter, heads, kv, head_dim, vocab, 2, "sdpa", "cuda", checkpointed)
                acts, weights = peak_bytes(shape, rows, width, 1, True), int(weight(params, embeddings))
                mark = "yes" if checkpointed else "no"
                lines.append(f"| {name} | {base} | {mark} | {gib(weights)} | {gib(acts)} | {gib(weights + acts)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4, help="training batch")
    parser.add_argument("--width", type=int, default=512, help="tokens per row (prompt and answer)")
    args = parser.parse_args()
    print(table(args.rows, args.width))


if __name__ == "__main__":
    main()
