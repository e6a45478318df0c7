"""Launching jobs: submitit executors (slurm | local | debug), waiting with failure surfacing,
site configuration (file < env < flags), and torch.distributed setup. Heavy imports stay inside functions."""

from xlbtm.launch.distributed import DistInfo, destroy_distributed, init_distributed
from xlbtm.launch.executor import RUN_MODES, JobRunMode, RunMode, make_executor, requeue_and_exit, slurm_available
from xlbtm.launch.site import SiteConfig, add_slurm_args, resolve_site, site_from_args
from xlbtm.launch.wait import JobFailedError, JobFailure, wait_for

__all__ = [
    "DistInfo",
    "init_distributed",
    "destroy_distributed",
    "RUN_MODES",
    "JobRunMode",
    "RunMode",
    "make_executor",
    "requeue_and_exit",
    "slurm_available",
    "SiteConfig",
    "add_slurm_args",
    "resolve_site",
    "site_from_args",
    "JobFailedError",
    "JobFailure",
    "wait_for",
]
