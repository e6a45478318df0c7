#!/usr/bin/env bash
# The GPU check of issue #12: one JSON line per figure (see benchmarks/gpu_check.py for what each one means).
#   bash benchmarks/gpu_check.sh            on a GPU machine: every figure, <= ~8 minutes on one GPU
#   bash benchmarks/gpu_check.sh --quick    CI-sized: the CPU parts; the GPU figures say "measured": false
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py "$@"
