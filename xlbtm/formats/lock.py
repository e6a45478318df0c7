"""A directory's lock: `<dir>/.lock`, an `flock` held by the one process writing the dir, whose contents say
who that is (JSON: host, pid, SLURM job id, since when, doing what) for the message another process prints.

The kernel drops an flock when its holder dies, kill -9 included, so a rerun never finds a stale lock; the
file itself is left behind and means nothing unless locked. Used for a run dir (one trainer per expert:
`xlbtm.train.expert_dir.RunLock`) and for binarized data shared by every `train_experts` into one
serialization dir (`DirLock.wait`: the second run waits, then reuses what the first one wrote).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xlbtm.cli import get_logger

LOCK = ".lock"

log = get_logger("lock")


def job_id() -> str | None:
    """This process's scheduler job, if any (named in the lock so a user can find and stop it)."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


class DirLock:
    """The exclusive right to write `dir`. On a filesystem without locks the writer goes on unlocked, with a
    warning (`acquire` returns None)."""

    def __init__(self, dir: str | os.PathLike, what: str = "writing it"):
        self.path = Path(dir) / LOCK
        self.what = what  # what the holder does, for the waiting side's message
        self._fd: int | None = None
        self.made_dir = False  # whether taking the lock created `dir` (see `discard`)

    def acquire(self) -> str | None:
        """Take the lock without waiting; returns None, or who holds it (in words) without taking it."""
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.made_dir = True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return f"{self.path.parent} is {self.holder()}"
        except OSError as e:  # e.g. ENOLCK on an NFS mount without a lock daemon
            os.close(fd)
            log.warning(f"cannot lock {self.path} ({e.strerror}): a second writer of this dir would not be stopped")
            return None
        if not _same_file(fd, self.path):  # the holder removed its lock file (`remove`) before we locked it
            os.close(fd)
            return self.acquire()
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": job_id(),
            "since": time.time(),
            "what": self.what,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return None

    def wait(self, echo: Callable[[str], Any], every_s: float = 60.0, poll_s: float = 0.5) -> None:
        """Take the lock, waiting as long as another process holds it: says so (who, since when) once at
        once and then every `every_s` seconds, so a run that seems stuck names what it waits for."""
        why = self.acquire()
        if why is None:
            return
        t0 = last = time.monotonic()
        echo(f"waiting: {why}")
        while True:
            time.sleep(poll_s)
            why = self.acquire()
            if why is None:
                echo(f"{self.path.parent}: lock taken after waiting {time.monotonic() - t0:.0f} s")
                return
            if time.monotonic() - last >= every_s:
                last = time.monotonic()
                echo(f"still waiting ({time.monotonic() - t0:.0f} s): {why}")

    @contextlib.contextmanager
    def held(self, echo: Callable[[str], Any], every_s: float = 60.0) -> Iterator[None]:
        """`wait`, then release on leaving the block; on an error, `discard` (no dir left behind that only
        the lock made)."""
        self.wait(echo, every_s)
        try:
            yield
        except BaseException:
            self.discard()
            raise
        finally:
            self.release()

    def holder(self) -> str:
        """Who holds the lock, in words (the lock file's contents): `<what> by pid P on H (job J) since T`."""
        try:
            h = json.loads(self.path.read_text())
            since = h.get("since")
            return (
                f"{h.get('what') or 'locked'} by pid {h['pid']} on {h['host']}"
                + (f" (job {h['job_id']})" if h.get("job_id") else "")
                + (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else "")
            )
        except (OSError, ValueError, KeyError, TypeError):
            return f"{self.what} by another process"

    def held_by_other(self) -> str | None:
        """Probe without keeping the lock: None if free, else who holds it."""
        if not self.path.is_file():
            return None
        why = self.acquire()
        self.release()
        return why

    def discard(self) -> None:
        """Release; when taking the lock created the dir and nothing but the lock file is in it (the work
        failed before writing anything), delete both first, still holding the lock. Whoever opened the old
        file meanwhile sees, once it has locked it, that it is no longer the path's file and starts over."""
        try:
            if self._fd is not None and self.made_dir and [f.name for f in self.path.parent.iterdir()] == [LOCK]:
                self.path.unlink()
                self.path.parent.rmdir()
        except OSError:  # something appeared meanwhile, or the dir is gone: leave it as it is
            pass
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
