"""Train ONE expert: the entry point every rank of its process group calls (`train_expert`).

It joins the process group, locks the run dir, installs the preemption handler, and runs the `Trainer`
(`xlbtm.train.trainer`: data, model, optimizer, step, validation, checkpoints, the loop).
"""

from __future__ import annotations

import torch

from xlbtm.errors import UsageError
from xlbtm.launch.distributed import destroy_distributed, init_distributed
from xlbtm.train.config import OBJECTIVES, TrainConfig
from xlbtm.train.expert_dir import RunLock
from xlbtm.train.preemption import PreemptionHandler
from xlbtm.train.trainer import Trainer, TrainResult

# ------------------------------------------------------------------------------------------ process group


def _init_distributed(device: str | None):
    """(rank, world_size, device) from the launch layer (submitit, torchrun, srun or alone); a single process
    still gets a 1-rank group so the same mesh / FSDP code path runs everywhere."""
    info = init_distributed(device=device, init_single=True)
    return info.rank, info.world_size, torch.device(info.device), info.source != "existing"


# -------------------------------------------------------------------------------------------------- train


def train_expert(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one expert; every rank of its process group calls this."""
    if cfg.objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {cfg.objective!r}")

    rank, world, device, own_group = _init_distributed(cfg.device)

    lock = RunLock(cfg.run_dir)
    preempt = PreemptionHandler().install()
    try:
        _hold_run_lock(lock, rank)
        return Trainer.build(cfg, rank, world, device).fit(preempt)
    finally:
        lock.release()
        preempt.uninstall()
        if own_group:  # e.g. `--run debug` trains in the caller's process: leave no process group behind
            destroy_distributed()


def _hold_run_lock(lock, rank: int) -> None:
    """Rank 0 locks the run dir; every rank learns the outcome (so none waits in a collective for a rank 0
    that stopped) and all stop together when another trainer holds it."""
    import torch.distributed as dist

    why = [lock.acquire() if rank == 0 else None]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(why, src=0)
    if why[0] is not None:
        raise UsageError(f"{why[0]}: wait for it to finish (or stop it), or train into another --serialization-dir")
