#!/usr/bin/env bash
# Stop the single-node SLURM started by start.sh: cancel jobs, then slurmd, slurmctld, slurmdbd and the
# mariadbd / munged that start.sh started (each found by its PID file; daemons it did not start are left alone).
# Usage: bash slurm/local/stop.sh [--keep-jobs]
set -uo pipefail

RUN_DIR=/run/xlbtm-slurm
say() { echo "slurm/local: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "slurm/local: error: must run as root" >&2; exit 1; }

# stop_pidfile PIDFILE NAME: SIGTERM, wait up to 20 s, then SIGKILL.
stop_pidfile() {
  local f=$1 name=$2 pid i
  [ -s "$f" ] || { say "$name: no PID file ($f), not running"; return 0; }
  pid=$(tr -dc '0-9' < "$f")
  if [ -z "$pid" ] || [ ! -d "/proc/$pid" ] || ! grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
    say "$name: not running (stale PID file)"; rm -f "$f"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 40); do
    [ -d "/proc/$pid" ] || break
    sleep 0.5
  done
  if [ -d "/proc/$pid" ]; then
    say "$name ($pid) ignored SIGTERM for 20 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
  say "$name stopped"
}

if [ "${1:-}" != "--keep-jobs" ] && command -v squeue >/dev/null 2>&1; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    sleep 2
  fi
fi

stop_pidfile "$RUN_DIR/slurmd.pid" slurmd
stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
stop_pidfile "$RUN_DIR/slurmdbd.pid" slurmdbd
stop_pidfile "$RUN_DIR/mysql/mariadbd.pid" mariadbd
if [ -s "$RUN_DIR/munged.pid" ]; then
  stop_pidfile "$RUN_DIR/munged.pid" munged
  rm -f /run/munge/munged.pid
fi
