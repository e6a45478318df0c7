"""Sharded checkpoints with torch.distributed.checkpoint (DCP): resharding-safe save / load / read.

Layout (contract 5): `<run>/checkpoints/step_<n>/` is a DCP dir with top-level keys
  "model"       plain parameter FQNs (from `get_model_state_dict` on the parallelized model)
  "optimizer"   `get_optimizer_state_dict` (FQN-keyed, so it reshards too)
  "train_state" scalar int64 tensors: step, position (global sample index), seed, ...
plus `train_state.json` (a readable copy). `<run>/checkpoints/latest` holds `step_<n>`; it is written
atomically and only after every rank finished writing that step, so a crash mid-save leaves the previous
checkpoint as `latest`. Only the newest `keep` step dirs are kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from xlbtm.errors import InputError

LATEST = "latest"


def _ckpt_root(run_or_ckpt_dir: str | os.PathLike) -> Path:
    p = Path(run_or_ckpt_dir)
    return p if p.name == "checkpoints" else p / "checkpoints"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `checkpoints/latest` points to, or None when the run has none yet."""
    root = _ckpt_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name.startswith("step_") or not (path / ".metadata").is_file():
        raise InputError(f"'latest' points to {name!r}, which is not a complete DCP checkpoint", pointer)
    return path


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _state(model, optimizer, train_state: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model),
             "train_state": {k: torch.tensor(int(v), dtype=torch.int64) for k, v in train_state.items()}}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, train_state: dict,
                    keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final `step_<n>` dir."""
    import torch.distributed.checkpoint as dcp

    from xlbtm.io import atomic_open, write_json

    root = _ckpt_root(run_dir)
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    if _is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_state(model, optimizer, train_state), checkpoint_id=str(tmp))
    _barrier()
    if _is_rank0():
        write_json(tmp / "train_state.json", {k: int(v) for k, v in train_state.items()})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_open(root / LATEST) as f:  # only now is step_<n> complete
            f.write(final.name + "\n")
        steps = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
                       key=lambda p: int(p.name[5:]))
        for old in steps[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer=None) -> dict:
    """Collective: load model (+ optimizer) in place, resharding to the current mesh; returns train_state."""
    import json

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    ckpt_dir = Path(ckpt_dir)
    keys = json.loads((ckpt_dir / "train_state.json").read_text()).keys()
    state = _state(model, optimizer, {k: 0 for k in keys})
    dcp.load(state, checkpoint_id=str(ckpt_dir))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return {k: int(v) for k, v in state["train_state"].items()}


def read_train_state(ckpt_dir: str | os.PathLike) -> dict:
    from xlbtm.io import read_json

    return read_json(Path(ckpt_dir) / "train_state.json")


def read_model_state(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Full (unsharded) model tensors on CPU from a DCP checkpoint; one process, no process group needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / ".metadata").is_file():
        raise InputError("not a DCP checkpoint (no .metadata)", checkpoint_dir)
    meta = dcp.FileSystemReader(str(checkpoint_dir)).read_metadata()
    model = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(md, TensorStorageMetadata):
            model[key[len("model."):]] = torch.empty(md.size, dtype=md.properties.dtype)
    if not model:
        raise InputError("checkpoint has no 'model' tensors", checkpoint_dir)
    state = {"model": model}
    import warnings

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(checkpoint_dir), no_dist=True)
    return state["model"]
