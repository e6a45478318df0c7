"""A run's checkpoint directory: the layout around DCP's files, its one reader and one writer (contract 5).

    <run>/checkpoints/step_<n>/            one complete checkpoint: DCP's `.metadata` + `*.distcp` (written by
                                           `xlbtm.parallel.checkpoint`), plus train_state.json
    <run>/checkpoints/step_<n>/train_state.json
                                           {"format": "xlbtm-checkpoint/1", "step", "position", "seed", ...}:
                                           a readable copy of the scalars DCP holds as "train_state"
    <run>/checkpoints/.step_<n>.tmp/       a save in progress; renamed to step_<n> when every rank is done
    <run>/checkpoints/latest               one line, `step_<n>`: the newest complete checkpoint. Written
                                           (atomically) only after the rename, so a crash mid-save leaves
                                           the previous one as `latest`

A train_state.json from before the version field (no "format") reads as version 1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from xlbtm.errors import InputError
from xlbtm.io import atomic_open, read_json, write_json

FORMAT = "xlbtm-checkpoint/1"
LATEST = "latest"
TRAIN_STATE = "train_state.json"


def checkpoint_root(run_or_ckpt_dir: str | os.PathLike) -> Path:
    p = Path(run_or_ckpt_dir)
    return p if p.name == "checkpoints" else p / "checkpoints"


def staging_dir(root: Path, step: int) -> Path:
    return root / f".step_{step}.tmp"


def step_dirs(run_dir: str | os.PathLike, complete: bool = False) -> list[Path]:
    """The `step_<n>` dirs, oldest first; with `complete`, only those DCP finished (they have `.metadata`)."""
    root = checkpoint_root(run_dir)
    found = (
        p
        for p in root.glob("step_*")
        if p.is_dir() and p.name[5:].isdigit() and (not complete or (p / ".metadata").is_file())
    )
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `checkpoints/latest` points to, or None when the run has none yet."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name.startswith("step_") or not (path / ".metadata").is_file():
        raise InputError(f"'latest' points to {name!r}, which is not a complete DCP checkpoint", pointer)
    return path


def publish(root: Path, step: int, train_state: dict, keep: int) -> Path:
    """Once every rank has written step `step` into its staging dir: rename it into place, then point `latest`
    at it (only now is it complete), then prune to the newest `keep`."""
    tmp, final = staging_dir(root, step), root / f"step_{step}"
    write_json(tmp / TRAIN_STATE, {"format": FORMAT, **{k: int(v) for k, v in train_state.items()}})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    with atomic_open(root / LATEST) as f:
        f.write(final.name + "\n")
    steps = step_dirs(root)
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_train_state(ckpt_dir: str | os.PathLike) -> dict[str, int]:
    """The train_state scalars of a `step_<n>` dir (without the format field)."""
    path = Path(ckpt_dir) / TRAIN_STATE
    state = read_json(path)
    if not isinstance(state, dict) or state.get("format", FORMAT) != FORMAT:
        raise InputError(f"not a train state this xlbtm reads (expected format {FORMAT})", path)
    return {k: int(v) for k, v in state.items() if k != "format"}
