"""What each stage of the pipeline was built from, so that a rerun into the same --out reuses a stage only when
it would build the same thing.

    <dir>/stages.json   {"format": "xlbtm-stages/1", "stages": {"<stage>": {"<flag>": value, ...}, ...}}

A stage's key holds the flags it depends on (its inputs' as well), each under the flag's name so a refusal can
name it; an input file or dir is keyed by its resolved path and a fingerprint of its files' sizes and mtimes
(as `cluster` and `train_experts` key their own outputs: hashing a corpus of many GB on every rerun would cost
more than the stages it guards). Every key is checked before anything is written, and recorded before its
stage writes anything, so a run that crashed half-way is compared too.

A stage whose outputs exist but were built from other inputs is refused, not redone: those outputs are an
earlier run's results (hours of training at real sizes), a mistyped --data-dir must not throw them away, and
the project's rule for every output is that only the same command's earlier output for the same inputs is
replaced. The refusal is one line naming --out, the stage and the flag that differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xlbtm.cli import get_logger
from xlbtm.corpus.files import find_jsonl_files
from xlbtm.errors import InputError, UsageError
from xlbtm.io import read_json, sha256_json, write_json

log = get_logger("study")

STAGES_JSON = "stages.json"
FORMAT = "xlbtm-stages/1"
LABELS = {
    "tokenizer": "a tokenizer",
    "seed": "a dense seed",
    "clusterer": "a clusterer and its assignment",
    "pair_clusters": "an assignment of translation pairs",
    "models": "experts and a dense model",
}
REUSED = "a stage is reused only for the inputs and settings it was built from"


def files_identity(root: Path, files: Iterable[Path]) -> dict:
    """{"path", "files", "fingerprint"} of these files below `root`: the resolved path, how many, and a hash of
    each one's name, size and mtime (a file rewritten, added or removed changes it)."""
    listing = []
    for f in files:
        st = os.stat(f)
        listing.append([Path(f).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    listing.sort()
    return {"path": str(root), "files": len(listing), "fingerprint": sha256_json(listing)[:16]}


def corpus_identity(data: Path) -> dict:
    """The identity of a corpus: its documents' files (train and valid), not whatever else sits in the dir."""
    data = data.resolve()
    files = [f for split in ("train", "valid") if (data / split).is_dir() for f in find_jsonl_files(data / split)]
    return files_identity(data, files)


def path_identity(path: Path) -> dict:
    """The identity of a given file (a .pt) or dir (an HF model, a tokenizer): every non-hidden file in it."""
    path = path.resolve()
    if path.is_file():
        return files_identity(path.parent, [path])
    if not path.is_dir():
        raise InputError("not found", path)
    files = [
        f for f in path.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
    ]
    return files_identity(path, files)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, dict) and "path" in value:  # an input's identity: its path says which
        return str(value["path"])
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def difference(old: dict, new: dict) -> str | None:
    """The first setting that differs, in words ("--num-clusters 2; this run: 3"), or None."""
    for flag in list(new) + [f for f in old if f not in new]:
        was, now = old.get(flag), new.get(flag)
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict) and "fingerprint" in was:
            if was.get("path") != now.get("path"):
                return f"{flag} {was.get('path')}; this run: {now.get('path')}"
            return (
                f"{flag} {now.get('path')} as it was then ({was.get('files')} files; now {now.get('files')}, "
                "changed since)"
            )
        return f"{flag} {_show(was)}; this run: {_show(now)}"
    return None


class StageRecord:
    """The keys of the stages built in one dir (--out, or a study point's dir)."""

    def __init__(self, root: Path, out: str):
        self.root = Path(root)
        self.out = out  # --out as the user typed it, for the messages
        self.path = self.root / STAGES_JSON
        d = read_json(self.path) if self.path.is_file() else {"format": FORMAT, "stages": {}}
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("stages"), dict):
            raise InputError(f"not an xlbtm stage record (expected format {FORMAT})", self.path)
        self.stages: dict[str, dict] = d["stages"]

    def check(self, stage: str, key: dict, built: list[Path]) -> None:
        """Refuse when the stage's outputs (`built`, any of them) exist and were built from another key."""
        if not any(p.exists() for p in built):
            return
        old = self.stages.get(stage)
        if old is None:
            # an --out written before stages were recorded: nothing to compare (artifact checks still apply)
            log.warning(f"{self.root}: {stage} predates {STAGES_JSON}; reused as it is")
            return
        why = difference(old, key)
        if why is not None:
            where = next(p for p in built if p.exists())
            raise UsageError(
                f"--out {self.out} holds {LABELS.get(stage, stage)} ({where}) built with {why}: pass another "
                f"--out ({REUSED})"
            )

    def record(self, keys: dict[str, dict]) -> None:
        """Record these stages' keys (after `check` passed for each: a built stage's key is unchanged)."""
        if all(self.stages.get(s) == k for s, k in keys.items()):
            return
        self.stages.update(keys)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"format": FORMAT, "stages": self.stages})
