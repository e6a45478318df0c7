"""Preemption: a signal only sets a flag; the loop checks it at step boundaries, all ranks agree (MAX
all-reduce), save a checkpoint, and exit. Inside a submitit job the job is then requeued
(`xlbtm.launch.executor.requeue_and_exit`); elsewhere the run returns status "preempted"."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from xlbtm.launch.executor import requeue_and_exit

SIGNALS = ("SIGUSR1", "SIGTERM", "SIGUSR2")


class PreemptionHandler:
    def __init__(self) -> None:
        self.flag = False
        self.signum: int | None = None
        self.previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def install(self) -> PreemptionHandler:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled on the main thread
        for name in SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.flag = True
        self.signum = signum

    def uninstall(self) -> None:
        for sig, h in self.previous.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        self.previous.clear()

    def agreed(self, device=None, group=None) -> bool:
        """Collective: True on every rank when any rank got a signal (`device`: where NCCL can reduce)."""
        import torch
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size(group) == 1:
            return self.flag  # nobody to agree with: no collective, no host sync
        t = torch.tensor([1 if self.flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        return bool(t.item())

    def hand_over(self, is_main: bool = True) -> None:
        """After saving: inside a submitit job, ask for a requeue (the rerun resumes from `latest`).

        Not after SIGTERM: that is SLURM preempting or `scontrol requeue`-ing the job, and SLURM requeues it
        by itself; SIGUSR2 (submitit's time-limit warning) and SIGUSR1 need us to ask."""
        if self.signum == signal.SIGTERM:
            return
        if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
            self.uninstall()
            requeue_and_exit(0)
