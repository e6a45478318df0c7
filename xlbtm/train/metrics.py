"""Training metrics: tokens/s, MFU, and the log sinks (stdout, train_log.jsonl, optional TensorBoard)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from xlbtm.formats.layout import train_log_path
from xlbtm.io import atomic_open

# dense bf16 peak FLOP/s per device (no sparsity); MFU is reported against these
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "V100": 125e12,
    "B200": 2250e12,
    "MI300X": 1307e12,
}


def peak_flops(device) -> float | None:
    """bf16 dense peak of this device, or None where MFU is meaningless (CPU) or the GPU is unknown."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_FLOPS.items():
        if key in name:
            return val
    return None


def mfu(flops_per_token: float, tokens_per_s_per_device: float, peak: float | None) -> float | None:
    return None if not peak else flops_per_token * tokens_per_s_per_device / peak


class MetricLogger:
    """Rank 0 only: one line to stdout per log, one JSON object per line to train_log.jsonl, TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.path = train_log_path(run_dir)
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                print("tensorboard not installed (pip install xlbtm[tensorboard]); logging without it", file=sys.stderr)

    def log(self, record: dict, echo: bool = True) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if echo:
            parts = []
            for k, v in record.items():
                if isinstance(v, float):
                    v = f"{v:.4g}"
                parts.append(f"{k}={v}")
            print(" | ".join(parts), flush=True)
        if self.tb is not None:
            step = record.get("step", 0)
            prefix = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (a killed run logged them, the rerun will
        log them again), so the log reads like one uninterrupted run; a torn last line is dropped too.
        `step` -1 drops every record (a start from the seed: nothing a killed run logged survives). The log
        is replaced atomically: a kill during this leaves the old log or the new one, never half of it."""
        if not self.enabled or not self.path.is_file():
            return

        keep = [r for r in read_train_log(self.path.parent) if r.get("step", 0) <= step]
        with atomic_open(self.path) as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_train_log(run_dir: str | os.PathLike) -> list[dict]:
    p = train_log_path(run_dir)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
    return out
