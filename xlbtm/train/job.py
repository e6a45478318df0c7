"""The submitit callable that trains one expert (every task of the job runs it; requeue resumes)."""

from __future__ import annotations

import dataclasses

from xlbtm.cli import setup_logging
from xlbtm.launch.lifeline import watch_driver
from xlbtm.train.config import TrainConfig
from xlbtm.train.loop import train_expert


class ExpertJob:
    """Picklable, and `submitit.helpers.Checkpointable`-compatible: on a timeout signal submitit calls
    `checkpoint()`, which resubmits the same call; the rerun resumes from the run's `latest` checkpoint."""

    def __init__(self, cfg_dict: dict):
        self.cfg_dict = cfg_dict

    def __call__(self) -> dict:
        setup_logging("train")
        watch_driver()  # `--run local`: stop when the driver is killed (no orphan trainers)
        result = train_expert(TrainConfig.from_dict(self.cfg_dict))
        return dataclasses.asdict(result)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(ExpertJob(self.cfg_dict))
