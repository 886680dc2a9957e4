#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one run (a few minutes on one H100 or H200; Qwen3-4B's shape with
# random weights, nothing downloaded): a sweep cell of 15 adapters packed against the reference loop and against one
# adapter at a time, eager and with CUDA graphs, T=1 teacher collection profiled, and the phases of speed.py.
#   bash benchmarks/gpu.sh                                               # on the GPU machine
#   DEVICE=cpu MODEL=tiny PYTHON=.venv/bin/python bash benchmarks/gpu.sh  # the same steps on a CPU: a check
# Packages the GPU machine lacks (ia2 pins transformers 5.24.0, peft 0.21.2) travel as wheels in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-qwen3-4b-shape} OUT=${OUT:-benchmarks/results} PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
compiled=$([ "$DEVICE" = cuda ] && echo cudagraphs || echo on)
tag=$DEVICE-$MODEL
"$PY" benchmarks/packed.py --device "$DEVICE" --model "$MODEL" --profile --out "$OUT/$tag-packed"
"$PY" benchmarks/packed.py --device "$DEVICE" --model "$MODEL" --compile "$compiled" --out "$OUT/$tag-packed-$compiled"
"$PY" benchmarks/speed.py --device "$DEVICE" --model "$MODEL" --quick --collect-batch 128 --out "$OUT/$tag-speed"
