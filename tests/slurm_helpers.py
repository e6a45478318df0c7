"""Helpers for tests that run against a real SLURM (slurm/local/start.sh); used by tests/conftest.py only,
so it lives with the tests, not in the library.

`slurm_status()` says whether a controller and accounting answer; `SlurmCluster` wraps the few
scontrol/squeue calls tests need: job state, and releasing a requeued job at once (SLURM holds a
requeued job back for ~2 minutes through its BeginTime).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

REQUIRE_ENV = "XLBTM_REQUIRE_SLURM"
# CI sets it to the node count the cluster must have (2 for `start.sh --nodes 2`): multi-node tests then fail
# instead of skipping on a smaller cluster.
REQUIRE_NODES_ENV = "XLBTM_REQUIRE_SLURM_NODES"


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_status() -> tuple[bool, str]:
    """(True, partition) when sinfo and sacct answer, else (False, why)."""
    try:
        r = _run(["sinfo", "-h", "-o", "%P %a"])
    except FileNotFoundError:
        return False, "SLURM is not installed (no sinfo); run: sudo bash slurm/local/start.sh"
    except subprocess.TimeoutExpired:
        return False, "sinfo timed out: slurmctld does not answer"
    if r.returncode != 0:
        return (
            False,
            f"no slurmctld reachable (sinfo: {(r.stderr or r.stdout).strip()[:200]}); "
            "run: sudo bash slurm/local/start.sh",
        )
    parts = [line.split() for line in r.stdout.splitlines() if line.strip()]
    up = [p[0] for p in parts if len(p) == 2 and p[1] == "up"]
    if not up:
        return False, f"no partition is up (sinfo: {r.stdout.strip()!r})"
    default = next((p for p in up if p.endswith("*")), up[0]).rstrip("*")
    try:
        a = _run(["sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID"])
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False, "sacct does not answer (slurmdbd down?); submitit needs accounting to see job states"
    if a.returncode != 0:
        return False, f"sacct fails ({(a.stderr or a.stdout).strip()[:200]}); submitit needs slurmdbd accounting"
    return True, default


def partition_nodes(partition: str) -> list[str]:
    """The partition's node names (sinfo), e.g. ["node1", "node2"] or ["localhost"]."""
    r = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"])
    return sorted(set(r.stdout.split())) if r.returncode == 0 else []


def node_addr(name: str) -> str | None:
    """NodeAddr of a node as slurmctld knows it."""
    r = _run(["scontrol", "show", "node", name, "-o"])
    return next((f.split("=", 1)[1] for f in r.stdout.split() if f.startswith("NodeAddr=")), None)


def sacct_nodes(
    job_ids: list[str],
    *,
    name: str | None = None,
    since: str | None = None,
    want: int | None = None,
    timeout: float = 60,
) -> dict[str, str]:
    """NodeList of each completed job (by id, or by job name since a time), from accounting (which lags a
    little behind the jobs' end)."""
    sel = ["-j", ",".join(job_ids)] if job_ids else ["--name", name, "-S", since]
    want = want or len(job_ids)
    end = time.monotonic() + timeout
    while True:
        out = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,NodeList,State", *sel]).stdout
        rows = {r[0]: r[1] for r in (ln.split("|") for ln in out.splitlines()) if len(r) == 3 and r[2] == "COMPLETED"}
        if len(rows) >= want or time.monotonic() > end:
            return rows
        time.sleep(1)


@dataclass
class SlurmCluster:
    partition: str

    def state(self, job_id: str) -> str | None:
        """slurmctld's state of a job (PENDING, RUNNING, COMPLETING, ...), None when it does not know it."""
        from xlbtm.launch.wait import scheduler_state

        return scheduler_state(str(job_id))

    def wait_state(self, job_id: str, states: set[str] | tuple[str, ...], timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while True:
            s = self.state(job_id)
            if s in states:
                return s
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} did not reach {sorted(states)} in {timeout} s (state {s})")
            time.sleep(0.3)

    def release(self, job_id: str, timeout: float = 120) -> None:
        """Once a requeued job is PENDING again, start it now instead of after SLURM's ~2 min hold."""
        self.wait_state(job_id, {"PENDING"}, timeout)
        r = _run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"])
        if r.returncode != 0:
            raise RuntimeError(f"scontrol update jobid={job_id} StartTime=now: {r.stderr.strip()}")

    def requeue(self, job_id: str, release: bool = True) -> None:
        """`scontrol requeue` (SIGTERM, then SIGKILL after KillWait), then release it at once."""
        r = _run(["scontrol", "requeue", str(job_id)])
        if r.returncode != 0:
            raise RuntimeError(f"scontrol requeue {job_id}: {r.stderr.strip()}")
        if release:
            self.release(job_id)

    @property
    def nodes(self) -> list[str]:
        return partition_nodes(self.partition)

    def set_node_state(self, node: str, state: str, reason: str = "xlbtm test") -> None:
        """`scontrol update NodeName=node State=...` (DOWN needs a reason; RESUME brings it back)."""
        cmd = ["scontrol", "update", f"NodeName={node}", f"State={state}"]
        if state.upper() in ("DOWN", "DRAIN"):
            cmd.append(f"Reason={reason}")
        r = _run(cmd)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def require_slurm() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "1"


def required_nodes() -> int:
    try:
        return int(os.environ.get(REQUIRE_NODES_ENV, "0") or 0)
    except ValueError:
        return 0
