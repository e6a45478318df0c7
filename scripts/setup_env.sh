#!/usr/bin/env bash
# Create .venv (if missing) and install xlbtm with its test extras (dev, eval), using the CPU build of torch
# when one is on the machine. Idempotent: a second run only checks that the install is current.
# Usage: source-free; prints the python to use on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.xlbtm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # callers keep only the last line of stdout (the python path): everything else goes to stderr, so a first
  # run shows what it is doing instead of sitting silent for minutes
  start=$(date +%s)
  echo "xlbtm setup: installing xlbtm and its test extras into .venv (torch pinned by .ci/constraints.txt;" \
       "first run only: 1.5 minutes measured on 2 cores with a local wheelhouse, several more when pip downloads torch)" >&2
  export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"
  .venv/bin/pip install --upgrade pip >&2
  .venv/bin/pip install -e '.[dev,eval]' >&2  # eval: lm-eval, for tests/test_harness.py
  touch "$stamp"
  echo "xlbtm setup: done in $(( $(date +%s) - start )) s" >&2
fi
echo "$PWD/.venv/bin/python"
