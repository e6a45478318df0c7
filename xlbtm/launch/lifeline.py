"""Jobs started by a `--run local` driver die with it.

submitit's LocalExecutor starts every job as a detached controller process meant to outlive the Python
session that submitted it. For `train_experts --run local` that is wrong: a driver killed by SIGTERM,
kill -9 or a closed terminal would leave trainers running that nobody waits for, and that the next run would
fight for the GPUs and the run dir. So while it submits, the driver exports its identity (pid + start time,
which pid reuse cannot fake), and each job watches it from a daemon thread: once the driver is gone the job
exits at once. Its run resumes from its last checkpoint when the same command is run again.

Only for local jobs: a SLURM job on another node could not see the driver's pid, and outliving the
login-node driver is exactly what a SLURM job is for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

ENV = "XLBTM_DRIVER"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux); "" where /proc has none; None: no process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    return stat.rsplit(b")", 1)[1].split()[19].decode()  # field 22; the name before ")" may hold spaces


def _alive(identity: str) -> bool:
    pid_s, _, started = identity.partition(":")
    pid = int(pid_s)
    now = _start_time(pid)
    if now is None:
        if os.path.isdir("/proc/self"):
            return False
        try:  # no /proc (macOS): existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return not started or now == started  # another start time: the pid was reused


@contextlib.contextmanager
def jobs_die_with_this_process() -> Iterator[None]:
    """Jobs submitted inside this block inherit the lifeline (see the module docstring)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = f"{os.getpid()}:{_start_time(os.getpid()) or ''}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def watch_driver(interval_s: float = 1.0) -> threading.Thread | None:
    """In a job: exit this process as soon as the driver that started it is gone (no-op without one)."""
    identity = os.environ.get(ENV)
    if not identity or identity.split(":", 1)[0] == str(os.getpid()):  # `--run debug`: we are the driver
        return None

    def watch() -> None:
        import sys
        import time

        while _alive(identity):
            time.sleep(interval_s)
        print(
            f"xlbtm: the driver (pid {identity.split(':')[0]}) that started this job is gone; stopping. "
            "Run the same command again to resume from the last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)  # not sys.exit: the main thread may be inside a collective or a C++ kernel

    t = threading.Thread(target=watch, name="xlbtm-lifeline", daemon=True)
    t.start()
    return t
