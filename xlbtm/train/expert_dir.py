"""Expert run directories (contract 5): `<serialization_dir>/<K>_clusters/<run>.cluster<i>/`, laid out by
`xlbtm.formats.layout` (RunLayout: the paths; list_experts / find_expert_dirs: the experts below a dir, ordered
by expert.json's cluster, never by folder name). This module adds the run's lock:

    .lock                  held (flock) by the process training the run; names its host / pid / job id
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.formats.expert import read_expert_info  # noqa: F401  (re-exported)
from xlbtm.formats.layout import RunLayout, find_expert_dirs  # noqa: F401  (find_expert_dirs: re-exported)


def expert_run_dir(serialization_dir: str | os.PathLike, num_clusters: int, run_name: str, cluster: int) -> Path:
    return RunLayout.of(serialization_dir, num_clusters).run_dir(run_name, cluster)


LOCK = ".lock"


class RunLock:
    """The exclusive right to train one run dir, so a second trainer on the same dir (a job submitted twice,
    a forgotten `--run local`) stops with a message instead of interleaving steps with the first and pruning
    its checkpoints.

    An `flock` on `<run_dir>/.lock`: the kernel drops it when the holder dies, kill -9 included, so a
    requeued or rerun job never finds a stale lock. The file also says who holds it (host, pid, SLURM job),
    for the message. On a filesystem without locks the run goes on unlocked, with a warning."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns None, or why not (who holds it) without taking it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return f"{self.path.parent} is being trained by {self.holder()}"
        except OSError as e:  # e.g. ENOLCK on an NFS mount without a lock daemon
            os.close(fd)
            get_logger("train").warning(
                f"cannot lock {self.path} ({e.strerror}): a second trainer on this run dir would not be stopped"
            )
            return None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return None

    def holder(self) -> str:
        """Who holds the lock, in words (the lock file's contents)."""
        try:
            h = json.loads(self.path.read_text())
            return f"pid {h['pid']} on {h['host']}" + (f" (job {h['job_id']})" if h.get("job_id") else "")
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def held_by_other(self) -> str | None:
        """Probe without keeping the lock: None if free, else who holds it."""
        if not self.path.is_file():
            return None
        why = self.acquire()
        self.release()
        return why

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
