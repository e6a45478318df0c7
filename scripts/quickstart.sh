#!/usr/bin/env bash
# The README's demo command: install xlbtm into .venv if needed, then run the whole pipeline end to end
# on the built-in demo corpus (CPU is enough). Extra arguments go to `python -m xlbtm.scripts.quickstart`,
# e.g. `bash scripts/quickstart.sh --data-dir ../shared/corpora/manpages`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
exec "$PY" -m xlbtm.scripts.quickstart "$@"
