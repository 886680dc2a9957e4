#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one run, under 8 minutes on one H100 or H200 (Qwen3-4B's shape with
# random weights, nothing downloaded). Versions first, then each step under its own time limit, so that a step that
# fails or hangs prints a FAILED line and the next one still runs:
#   1. packed.py, eager: a sweep cell of 15 adapters packed, one adapter at a time and the reference loop, set-up and
#      steady state apart, with the profile of a T=1 teacher collection at batch 128 over 256 prompts (after a warm-up
#      at that shape);
#   2. pack_check.py: a pack of 3 adapters against the same adapters alone, in bf16 (largest differences printed);
#   3. speed.py --quick --collect-batch 128: the teacher and training phases against the reference loop;
#   4. packed.py with compiled layers (CUDA graphs; `on` on a CPU), last because compiling is the likeliest to fail.
# Results go to $OUT (benchmarks/results) under the device's own name (e.g. nvidia-h100-80gb-hbm3-qwen3-4b-shape-*).
#   bash benchmarks/gpu.sh                                                 # on the GPU machine
#   DEVICE=cpu MODEL=tiny PYTHON=.venv/bin/python bash benchmarks/gpu.sh    # the same steps on a CPU: a check
# Packages the GPU machine lacks (ia2 pins transformers 5.24.0, peft 0.21.2) travel as wheels in .whl/. The exit
# status is the number of steps that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-qwen3-4b-shape} OUT=${OUT:-benchmarks/results} PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src:benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
"$PY" - "$DEVICE" <<'EOF' || { echo "FAILED: versions (the environment does not import)"; exit 99; }
import platform, sys
import peft, torch, transformers
import speed
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, peft {peft.__version__}")
print(f"device: {device}, {speed.device_name(device)}")
EOF
tag=$("$PY" -c "import speed; print(speed.device_slug('$DEVICE'))")-$MODEL
compiled=$([ "$DEVICE" = cuda ] && echo cudagraphs || echo on)
failed=0

step() {  # step NAME SECONDS COMMAND...: run COMMAND within SECONDS; a FAILED line when it fails or runs over
    local name=$1 seconds=$2 start=$SECONDS status
    shift 2
    echo "=== $name (at most ${seconds}s)"
    timeout -k 10 "$seconds" "$@"
    status=$?
    if [ "$status" -eq 0 ]; then
        echo "=== $name: done in $((SECONDS - start))s"
    else
        echo "=== FAILED: $name (exit $status$([ "$status" -eq 124 ] && echo ", over ${seconds}s"))"
        failed=$((failed + 1))
    fi
}

step "packed, eager, T=1 profiled" 120 \
    "$PY" benchmarks/packed.py --device "$DEVICE" --model "$MODEL" --profile --out "$OUT/$tag-packed"
step "pack of 3 against alone, bf16" 60 \
    "$PY" benchmarks/pack_check.py --device "$DEVICE" --model "$MODEL" --dtype bfloat16 --out "$OUT/$tag-pack-check"
step "speed.py, quick" 150 \
    "$PY" benchmarks/speed.py --device "$DEVICE" --model "$MODEL" --quick --collect-batch 128 --out "$OUT/$tag-speed"
step "packed, compiled ($compiled)" 120 \
    "$PY" benchmarks/packed.py --device "$DEVICE" --model "$MODEL" --compile "$compiled" --out "$OUT/$tag-packed-$compiled"
echo "=== $failed step(s) failed; results in $OUT/$tag-*"
exit "$failed"
