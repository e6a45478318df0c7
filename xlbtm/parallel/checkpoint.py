"""Sharded checkpoints with torch.distributed.checkpoint (DCP): resharding-safe save / load / read.

Each `<run>/checkpoints/step_<n>/` (the layout, `latest` and train_state.json: `xlbtm.formats.checkpoints`)
is a DCP dir with top-level keys
  "model"       plain parameter FQNs (from `get_model_state_dict` on the parallelized model)
  "optimizer"   `get_optimizer_state_dict` (FQN-keyed, so it reshards too)
  "train_state" scalar int64 tensors: step, position (global sample index), seed, ...
Only the newest `keep` step dirs are kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from xlbtm.errors import InputError
from xlbtm.formats.checkpoints import (
    checkpoint_root,
    latest_checkpoint,
    publish,
    read_train_state,
    staging_dir,
    step_dirs,
)

# --------------------------------------------------------------------------- reading without running code
# torch's DCP reader runs code from the checkpoint in two places: `FileSystemReader.read_metadata` is a plain
# `pickle.load` of `.metadata`, and `DefaultLoadPlanner.load_bytes` (non-tensor entries such as the optimizer's
# param_groups) is `torch.load(weights_only=False)`. A crafted checkpoint would execute on resume, consolidate
# and eval. Every xlbtm read goes through the two classes below instead: `.metadata` admits only the DCP
# metadata classes and the torch types they hold; byte entries use `torch.load(weights_only=True)` (plain
# Python values). Tensor data (`.distcp`) is already read with `weights_only=True` by torch.

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


def _metadata_unpickler(f, path: Path):
    import importlib
    import pickle

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module == _METADATA_MODULE:  # classes defined there, not what it happens to import
                obj = getattr(importlib.import_module(module), name, None)
                if isinstance(obj, type) and obj.__module__ == module:
                    return obj
            elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            elif (module, name) in _METADATA_GLOBALS:
                return super().find_class(module, name)
            raise InputError(
                f"refusing to read this checkpoint: its DCP metadata references {module}.{name}, "
                "which is not a checkpoint metadata type (a crafted file could run code); "
                "was it written by torch.distributed.checkpoint?",
                path,
            )

    return _Unpickler(f)


def _safe_reader(checkpoint_dir: str | os.PathLike):
    """A DCP `FileSystemReader` whose `.metadata` is read with the restricted unpickler above."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class _SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs) -> Metadata:
            path = Path(self._get_metadata_path(kwargs.get("rank")))
            if not path.is_file():
                if kwargs.get("rank") is not None:  # DCP probes for per-rank metadata and falls back
                    raise FileNotFoundError(path)
                raise InputError("not a DCP checkpoint (no .metadata)", path.parent)
            with open(path, "rb") as f:
                try:
                    metadata = _metadata_unpickler(f, path).load()
                except InputError:
                    raise
                except Exception as e:  # truncated or garbled file
                    raise InputError(f"unreadable DCP metadata ({type(e).__name__}: {e})", path) from None
            if not isinstance(metadata, Metadata):
                raise InputError(f"DCP metadata is a {type(metadata).__name__}, not a Metadata", path)
            if getattr(metadata, "storage_meta", None) is None:  # as torch's reader does
                metadata.storage_meta = StorageMeta()
            assert metadata.storage_meta is not None  # set just above when it was missing
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeFileSystemReader(str(checkpoint_dir))


def _safe_planner(checkpoint_dir: str | os.PathLike):
    """DCP's default load planner, with non-tensor entries read by `torch.load(weights_only=True)`."""
    import pickle

    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class _SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise InputError(
                    f"refusing to read checkpoint entry {fqn!r}: it holds more than plain values "
                    f"({str(e).splitlines()[0]})",
                    checkpoint_dir,
                ) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return _SafeLoadPlanner()


def dcp_load(state: dict, checkpoint_dir: str | os.PathLike, *, no_dist: bool = False) -> None:
    """`torch.distributed.checkpoint.load` into `state`, in place, without running code from the files."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_dcp_metadata(checkpoint_dir)  # refuse a bad .metadata here, before DCP folds the error into its own
    try:
        dcp.load(
            state, storage_reader=_safe_reader(checkpoint_dir), planner=_safe_planner(checkpoint_dir), no_dist=no_dist
        )
    except CheckpointException as e:
        inner = _unwrapped(e)
        if isinstance(inner, InputError):
            raise inner from None
        lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
        # torch's weights_only refusal is a page of advice; the line naming the object is the answer
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(inner).__name__)
        raise InputError(
            f"unreadable DCP checkpoint (a truncated or corrupt shard?): {first[:300]}", checkpoint_dir
        ) from None


def _unwrapped(e: BaseException) -> BaseException:
    """DCP wraps each rank's exception in a CheckpointException, which is a BaseException (past every
    `except Exception`) with a multi-rank traceback for a message. Ours (an InputError) or the OS's (disk
    full) is the one-line answer; else the first rank's own exception."""
    from torch.distributed.checkpoint.api import CheckpointException

    if not isinstance(e, CheckpointException):
        return e
    failures = [exc for exc, _ in e.failures.values()]
    for kind in (InputError, OSError):
        for exc in failures:
            if isinstance(exc, kind):
                return exc
    return failures[0] if failures and isinstance(failures[0], Exception) else RuntimeError(str(e))


def read_dcp_metadata(checkpoint_dir: str | os.PathLike):
    """The `Metadata` of a DCP checkpoint dir, read with the restricted unpickler."""
    return _safe_reader(checkpoint_dir).read_metadata()


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _state(model, optimizer, train_state: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {
        "model": get_model_state_dict(model),
        "train_state": {k: torch.tensor(int(v), dtype=torch.int64) for k, v in train_state.items()},
    }
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def _begin_save(root: Path, step: int) -> Path:
    """Collective: a fresh temp dir for step `step` (a killed earlier attempt's files are dropped)."""
    tmp = staging_dir(root, step)
    if _is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    return tmp


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, train_state: dict, keep: int = 2) -> Path:
    """Collective: every rank calls it; returns when step `step` is published. Returns its `step_<n>` dir."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    root = checkpoint_root(run_dir)
    tmp = _begin_save(root, step)
    try:
        dcp.save(_state(model, optimizer, train_state), checkpoint_id=str(tmp))
    except CheckpointException as e:  # every rank sees it (DCP gathers the errors): all clean up and stop
        if _is_rank0():
            shutil.rmtree(tmp, ignore_errors=True)  # `latest` still names the last complete step
        raise _unwrapped(e) from None
    _barrier()
    final = publish(root, step, train_state, keep) if _is_rank0() else root / f"step_{step}"
    _barrier()
    return final


class AsyncCheckpointer:
    """Checkpoints written while training goes on (`dcp.async_save`): `save` copies the state to host
    memory (staging) and returns; a background thread writes it. A step is published (renamed into place,
    `latest`) by rank 0 only once DCP has finished on every rank -- its coordinator writes `.metadata` after
    gathering every rank's writes -- so `latest` never names a checkpoint a kill -9 could have cut short.

    One save in flight at a time: the next `save` waits for the previous one. `poll()` after each step
    publishes a finished save without waiting; `wait()` blocks until the pending one is published. The
    background writes coordinate on their own gloo group, never on the training group's collectives."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2):
        import torch.distributed as dist

        self.root, self.keep = checkpoint_root(run_dir), keep
        self._group = dist.new_group(backend="gloo") if dist.is_initialized() else None  # collective
        # (future of the background write -- torch's or concurrent.futures', by torch version --, step,
        # train_state, staging dir) of the save in flight
        self._pending: tuple[Any, int, dict, Path] | None = None

    def save(self, step: int, model, optimizer, train_state: dict) -> None:
        """Collective: start saving step `step` (after publishing the previous save)."""
        import torch.distributed.checkpoint as dcp

        self.wait()
        tmp = _begin_save(self.root, step)
        fut = dcp.async_save(_state(model, optimizer, train_state), checkpoint_id=str(tmp), process_group=self._group)
        self._pending = (getattr(fut, "upload_completion", fut), step, dict(train_state), tmp)

    def poll(self) -> None:
        if self._pending is not None and self._pending[0].done():
            self._complete()

    def wait(self) -> None:
        if self._pending is not None:
            self._complete()

    def _complete(self) -> None:
        from torch.distributed.checkpoint.api import CheckpointException

        assert self._pending is not None  # callers (poll, wait) check that a save is in flight
        fut, step, train_state, tmp = self._pending
        self._pending = None
        try:
            fut.result()
        except CheckpointException as e:
            if _is_rank0():
                shutil.rmtree(tmp, ignore_errors=True)
            raise _unwrapped(e) from None
        if _is_rank0():
            publish(self.root, step, train_state, self.keep)


def load_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer=None) -> dict:
    """Collective: load model (+ optimizer) in place, resharding to the current mesh; returns train_state."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    ckpt_dir = Path(ckpt_dir)
    keys = read_train_state(ckpt_dir).keys()
    state = _state(model, optimizer, {k: 0 for k in keys})
    dcp_load(state, ckpt_dir)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return {k: int(v) for k, v in state["train_state"].items()}


def load_newest_readable(run_dir: str | os.PathLike, model, optimizer=None) -> tuple[Path, dict]:
    """Collective: `load_checkpoint` of `latest`; when that checkpoint is unreadable (a truncated `.metadata`
    or shard after a disk fault), the next older complete step, with a warning. Returns (checkpoint, train_state).
    Every rank sees the same failure (DCP gathers errors), so all ranks fall back together."""
    from xlbtm.cli import get_logger

    first = latest_checkpoint(run_dir)
    if first is None:
        raise InputError("no checkpoint to resume from", checkpoint_root(run_dir))
    older = [p for p in reversed(step_dirs(run_dir, complete=True)) if int(p.name[5:]) < int(first.name[5:])]
    error = None
    for ck in [first] + older:
        try:
            return ck, load_checkpoint(ck, model, optimizer)
        except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try the one before it
            if not isinstance(e, (InputError, OSError, ValueError, RuntimeError)):  # (dcp_load unwraps DCP's)
                raise
            error = error or e
            get_logger("train").warning(
                f"cannot load {ck} ({str(e).splitlines()[0][:200]}); trying an older checkpoint"
            )
    raise InputError(f"no readable checkpoint ({error})", checkpoint_root(run_dir))


def read_model_state(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Full (unsharded) model tensors on CPU from a DCP checkpoint; one process, no process group needed."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / ".metadata").is_file():
        raise InputError("not a DCP checkpoint (no .metadata)", checkpoint_dir)
    meta = read_dcp_metadata(checkpoint_dir)
    model = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(md, TensorStorageMetadata):
            model[key[len("model.") :]] = torch.empty(md.size, dtype=md.properties.dtype)
    if not model:
        raise InputError("checkpoint has no 'model' tensors", checkpoint_dir)
    state = {"model": model}
    import warnings

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp_load(state, checkpoint_dir, no_dist=True)
    return state["model"]
