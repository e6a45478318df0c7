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
  export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"
  .venv/bin/pip install --upgrade pip >/dev/null
  .venv/bin/pip install -e '.[dev,eval]'  # eval: lm-eval, for tests/test_harness.py
  touch "$stamp"
fi
echo "$PWD/.venv/bin/python"
