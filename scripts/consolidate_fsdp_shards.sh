#!/usr/bin/env bash
# Consolidate every expert under a serialization dir whose folder name matches PATTERN.
#
#   scripts/consolidate_fsdp_shards.sh SERIALIZATION_DIR "PATTERN" [consolidate flags, e.g. --dtype fp16 --hf]
#
# e.g. scripts/consolidate_fsdp_shards.sh /checkpoints/xlbtm "*cluster*" --hf
#
# - Expert dirs are the folders holding an expert.json; PATTERN is a shell glob on the folder name
#   (c-BTM: `find -name PATTERN`).
# - Skips experts already consolidated (consolidated.pt newer than checkpoints/latest).
# - Runs `python -m xlbtm.scripts.consolidate` on the rest in parallel: GNU parallel when installed, else
#   `xargs -P` ($RUNNER=parallel|xargs forces one). $JOBS sets the parallelism (default: number of CPUs),
#   $PYTHON the interpreter.
#   Each expert's output goes to <expert>/consolidate.log.
# - Exits 1 naming every expert that failed; paths with spaces are fine.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SERIALIZATION_DIR=$1
PATTERN=${2:-*}
shift $(( $# >= 2 ? 2 : 1 ))
if [[ ! -d $SERIALIZATION_DIR ]]; then
    echo "consolidate_fsdp_shards: not a directory: $SERIALIZATION_DIR" >&2
    exit 2
fi

PYTHON=${PYTHON:-python}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
FAIL_DIR=$(mktemp -d)
trap 'rm -rf "$FAIL_DIR"' EXIT
export PYTHON FAIL_DIR

todo=()
found=0
while IFS= read -r -d '' expert_json; do
    dir=$(dirname "$expert_json")
    name=$(basename "$dir")
    # shellcheck disable=SC2053  # unquoted on purpose: PATTERN is a glob
    [[ $name == $PATTERN ]] || continue
    found=$((found + 1))
    if [[ -f $dir/consolidated.pt && ( ! -e $dir/checkpoints/latest || $dir/consolidated.pt -nt $dir/checkpoints/latest ) ]]; then
        echo "skip (already consolidated): $dir"
        continue
    fi
    todo+=("$dir")
done < <(find "$SERIALIZATION_DIR" -name expert.json -type f -print0 | sort -z)

echo "experts found: $found, to consolidate: ${#todo[@]}"
if [[ $found -eq 0 ]]; then
    echo "consolidate_fsdp_shards: no expert dirs (with expert.json) named '$PATTERN' below $SERIALIZATION_DIR" >&2
    exit 1
fi
[[ ${#todo[@]} -eq 0 ]] && exit 0

# worker EXTRA_ARGS... DIR : the expert dir comes last (that is where xargs puts it)
worker() {
    local dir=${*: -1}
    local extra=("${@:1:$#-1}")
    if "$PYTHON" -m xlbtm.scripts.consolidate "$dir" "${extra[@]}" >"$dir/consolidate.log" 2>&1; then
        echo "ok: $dir"
    else
        echo "FAILED: $dir (log: $dir/consolidate.log)"
        # one file per failure: concurrent workers never write the same file
        printf '%s\n' "$dir" >"$(mktemp "$FAIL_DIR/failed.XXXXXX")"
    fi
}
export -f worker

RUNNER=${RUNNER:-auto}
if [[ $RUNNER == auto ]]; then
    RUNNER=xargs
    if command -v parallel >/dev/null 2>&1 && parallel --version 2>/dev/null | grep -q "GNU parallel"; then
        RUNNER=parallel
    fi
fi
if [[ $RUNNER == parallel ]]; then
    printf '%s\0' "${todo[@]}" | parallel -0 --will-cite -j "$JOBS" worker "$@" {}
else
    printf '%s\0' "${todo[@]}" | xargs -0 -n 1 -P "$JOBS" bash -c 'worker "$@"' worker "$@"
fi

shopt -s nullglob
failed=("$FAIL_DIR"/failed.*)
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "consolidate_fsdp_shards: ${#failed[@]} of ${#todo[@]} expert(s) failed:" >&2
    cat "${failed[@]}" | sort | sed 's/^/  /' >&2
    exit 1
fi
echo "consolidated ${#todo[@]} expert(s)"
