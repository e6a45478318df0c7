"""The binarized parallel data (what `binarize_pairs` writes, what TLM training reads): one pair stream per split.

    <pairs>/manifest.json          format, data dir, tokenizer + its fingerprint, clusterer fingerprint and K
                                   (null when the pairs are not clustered), pairs / tokens per split
    <pairs>/<split>/src.bin        uint32 tokens of every pair's source side, concatenated (no specials)
    <pairs>/<split>/src.idx        int64 offsets of the pairs into src.bin (n_pairs + 1 entries)
    <pairs>/<split>/tgt.bin, .idx  the same for the target sides: pair i is (src[i], tgt[i])
    <pairs>/<split>/cluster<k>.src.bin, ...   clustered pairs (train_experts --path-to-parallel-clusters-dir):
                                   the same four files per cluster k, instead of the four above
    <pairs>/<split>/done.json      the split's stats and the identity of its inputs; written last

Sides are stored without special tokens: the TLM example layout (`<s> src </s></s> tgt </s>`) and the packing
into samples are the dataset's (`xlbtm.data.dataset.TLMDataset`), so they can change without re-tokenizing.
Unclustered pairs are read by every expert of a run; clustered ones (assigned by `cluster --parallel-side`) by
the expert of their cluster only. Split stats are counts (`pairs`, `tokens.src`, `tokens.tgt`, `langs`), lists of
K counts when clustered. Training puts this dir at `<binarized dir>/parallel`. done.json is the binarized dir's
(`xlbtm.formats.binarized.write_done` / `split_status`), so "is this split up to date" has one answer for both.

Version: `format` is "xlbtm-pairs/2" (version 1, read as well, had no clusters: `num_clusters` reads as null).
"""

from __future__ import annotations

import os
from pathlib import Path

from xlbtm.errors import InputError
from xlbtm.io import read_json, write_json

FORMAT = "xlbtm-pairs/2"
READABLE = ("xlbtm-pairs/1", FORMAT)
MANIFEST = "manifest.json"
SIDES = ("src", "tgt")


def pairs_dir_for(binarized_dir: str | os.PathLike) -> Path:
    """Where a run's binarized pairs live: next to its monolingual streams."""
    return Path(binarized_dir) / "parallel"


def side_paths(pairs_dir: str | os.PathLike, split: str, side: str, cluster: int | None = None) -> tuple[Path, Path]:
    """(`.bin`, `.idx`) of one side of a split: of the pairs of `cluster`, or of all pairs (None) when the pairs
    are not clustered."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    d = Path(pairs_dir) / split
    stem = side if cluster is None else f"cluster{int(cluster)}.{side}"
    return d / f"{stem}.bin", d / f"{stem}.idx"


def write_pairs_manifest(pairs_dir: str | os.PathLike, manifest: dict) -> None:
    write_json(
        Path(pairs_dir) / MANIFEST, {"num_clusters": None, "clusterer_fingerprint": None, **manifest, "format": FORMAT}
    )


def read_pairs_manifest(pairs_dir: str | os.PathLike) -> dict:
    p = Path(pairs_dir) / MANIFEST
    if not p.is_file():
        raise InputError("binarized parallel data not found (train_experts --parallel-data binarizes it)", p)
    m = read_json(p)
    if m.get("format") not in READABLE:
        raise InputError(
            f"not xlbtm binarized parallel data this version reads (format {m.get('format')!r}; "
            f"expected one of {', '.join(READABLE)})",
            p,
        )
    return {"num_clusters": None, "clusterer_fingerprint": None, **m}
