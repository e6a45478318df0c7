#!/usr/bin/env bash
# Stop the SLURM started by start.sh: cancel jobs, then the slurmd(s), slurmctld, slurmdbd and the
# mariadbd / munged that start.sh started (each found by its PID file; daemons it did not start are left alone);
# after `start.sh --nodes N`, also remove the nodes' network namespaces xlbtm-node* and the bridge xlbtm-br0.
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
for f in "$RUN_DIR"/slurmd-*.pid; do  # one per node after start.sh --nodes N
  [ -e "$f" ] || continue
  stop_pidfile "$f" slurmd
done
stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
stop_pidfile "$RUN_DIR/slurmdbd.pid" slurmdbd
stop_pidfile "$RUN_DIR/mysql/mariadbd.pid" mariadbd
if [ -s "$RUN_DIR/munged.pid" ]; then
  stop_pidfile "$RUN_DIR/munged.pid" munged
  rm -f /run/munge/munged.pid
fi

# The nodes' network (start.sh --nodes N): only the names start.sh creates. A process still inside a
# namespace (a job step its slurmd left behind) is one of this cluster's: it is killed, by its PID.
for ns_path in /run/netns/xlbtm-node*; do
  [ -e "$ns_path" ] || continue
  ns=${ns_path##*/}
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null
  done
  ip netns del "$ns" && say "network namespace $ns removed"
done
for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^xlbtm-n[0-9]+$'); do
  ip link del "$veth" 2>/dev/null  # normally gone with its namespace
done
if ip link show xlbtm-br0 >/dev/null 2>&1; then
  if command -v iptables >/dev/null 2>&1; then
    while iptables -D FORWARD -i xlbtm-br0 -o xlbtm-br0 -j ACCEPT 2>/dev/null; do :; done
  fi
  ip link del xlbtm-br0 && say "bridge xlbtm-br0 removed"
fi
