#!/usr/bin/env bash
# The README's test command: install into .venv if needed, then run the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/run_tests.sh -m "not slurm"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
exec "$PY" -m pytest tests "$@"
