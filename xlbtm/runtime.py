"""The runtime policy: which device a command runs on, what a dtype name means, how training computes.

- `resolve_device(requested)`: an explicit request (a flag, a config) > $XLBTM_DEVICE > cuda when a GPU is
  visible > cpu. "auto", "" and None are no request. A cuda request without a GPU, or a name that is no
  device, is a `UsageError`.
- `dtype_name(name)` / `resolve_dtype(name)`: ONE vocabulary for every `--dtype` and dtype argument: fp32 |
  float32, bf16 | bfloat16, fp16 | float16 (any case). `dtype_name` gives the canonical torch name
  ("bfloat16"), `resolve_dtype` the torch dtype.
- `resolve_precision(precision, device_type)`: training's `--precision`: fp32, or bf16-mixed (bf16
  compute, fp32 master weights, optimizer state and gradient reductions); None = bf16-mixed on cuda, fp32
  on cpu.

Torch is imported only where a function needs it (a GPU to look for, a torch dtype to return): the scripts'
parsers, `xlbtm.launch` and the torch-free cluster assignment path import this module too, and importing
torch would cost each of them ~1 s (and the assignment path must not import it at all).
"""

from __future__ import annotations

import argparse
import os
import re
import typing
from typing import Literal

from xlbtm.errors import UsageError

DEVICE_ENV = "XLBTM_DEVICE"
DEVICES = ("cpu", "cuda")  # "cuda:<n>" names one GPU
# every accepted spelling -> the canonical (torch) name
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
Precision = Literal["fp32", "bf16-mixed"]  # training: --precision (TrainingSettings.precision)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
_NO_REQUEST = (None, "", "auto")


def _check_device_name(name: str, where: str) -> str:
    kind = name.strip().lower()
    if kind in DEVICES or re.fullmatch(r"cuda:\d+", kind):
        return kind
    raise UsageError(f"{where}: unknown device {name!r}; expected one of auto, cpu, cuda, cuda:<n>")


def requested_device(requested: str | None = None) -> str | None:
    """The device asked for, explicitly or by $XLBTM_DEVICE (normalized), or None when nobody asked.
    Checks the name only (no torch): whether the machine has the device is `resolve_device`'s business."""
    if requested not in _NO_REQUEST:
        return _check_device_name(requested, "device")
    env = os.environ.get(DEVICE_ENV, "").strip()
    if env not in _NO_REQUEST:
        return _check_device_name(env, f"${DEVICE_ENV}")
    return None


def resolve_device(requested: str | None = None) -> str:
    """ "cpu", "cuda" or "cuda:<n>": `requested` (None / "auto": not requested) > $XLBTM_DEVICE > cuda when
    a GPU is visible > cpu. A requested GPU that this machine does not have is a UsageError."""
    kind = requested_device(requested)
    if kind == "cpu":
        return kind  # no torch needed
    import torch

    if kind is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(kind.split(":")[1]) if ":" in kind else 0
    if index >= n:
        how = "" if requested not in _NO_REQUEST else f" (by ${DEVICE_ENV})"
        seen = "no GPU is visible" if n == 0 else f"only {n} GPU(s) are visible"
        raise UsageError(f"device {kind} requested{how} but {seen}; use cpu, or run where there is a GPU")
    return kind


def dtype_name(name: str) -> str:
    """The canonical name ("float32" | "bfloat16" | "float16") of any accepted spelling."""
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)} (any case)")
    return DTYPES[key]


def dtype_arg(name: str) -> str:
    """argparse `type=` for a --dtype flag: the canonical name, or argparse's own error (exit status 2)."""
    try:
        return dtype_name(name)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_dtype(name):
    """torch dtype of an accepted name (a torch.dtype passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, dtype_name(name))


def resolve_precision(precision: str | None, device_type: str) -> str:
    """Training precision: "fp32" | "bf16-mixed"; None = bf16-mixed on cuda, fp32 elsewhere."""
    if precision is None:
        return "bf16-mixed" if device_type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision
