"""What a waiting `train_experts` shows about each running expert: step / total, loss, tokens/s and an ETA,
read from the run's own train_log.jsonl (the trainer writes it for `--run local` and `--run slurm` alike, so
the driver needs nothing from the job but the file)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from xlbtm.formats.layout import train_log_path

BAR_WIDTH = 20
_TAIL_BYTES = 64 * 1024  # the last logged step is near the end: never read a long log whole every poll


def last_train_record(run_dir) -> dict | None:
    """The newest `kind: train` record of a run's train_log.jsonl (None: nothing logged yet)."""
    path = train_log_path(run_dir)
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written, or the first one cut by the seek
            continue
        if isinstance(rec, dict) and rec.get("kind") == "train" and isinstance(rec.get("step"), int):
            return rec
    return None


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class TrainProgress:
    """`progress(i)` -> one line for expert i of `experts` (ExpertPlans), for `launch.wait.wait_for`.

    The ETA comes from the steps this driver has watched go by (steps per second of wall time since it first
    saw the run's log move), so it includes validation and checkpointing, and needs no clock in the log."""

    def __init__(self, experts: Sequence, clock=time.monotonic):
        self.experts = list(experts)
        self.clock = clock
        self._first: dict[int, tuple[int, float]] = {}

    def __call__(self, i: int) -> str | None:
        p = self.experts[i]
        total = int(p.cfg.max_steps)
        rec = last_train_record(p.run_dir)
        if rec is None:
            return f"cluster {p.cluster}: starting (no step logged yet in {train_log_path(p.run_dir)})"
        step, now = int(rec["step"]), self.clock()
        first_step, first_t = self._first.setdefault(i, (step, now))
        if step > first_step and now > first_t:
            eta = format_duration((total - step) * (now - first_t) / (step - first_step))
        else:
            eta = "?"
        parts = [
            f"cluster {p.cluster}: step {step}/{total} {progress_bar(step / max(total, 1))} {step / max(total, 1):.0%}"
        ]
        if isinstance(rec.get("loss"), (int, float)):
            parts.append(f"loss {rec['loss']:.3f}")
        if isinstance(rec.get("tokens_per_s"), (int, float)):
            parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
        parts.append(f"ETA {eta}")
        return " | ".join(parts)
