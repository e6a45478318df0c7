"""The binarized dir (what `binarize` writes, what training reads): per-cluster, per-split token streams.

    <out>/manifest.json          format, tokenizer + clusterer fingerprints, K, tokens per cluster and language
    <out>/<split>/cluster<k>.bin uint32 token stream: for every document `</s> tok tok ...`
    <out>/<split>/cluster<k>.idx int64 offsets of the documents into the stream (n_docs + 1 entries)
    <out>/<split>/done.json      this split's part of the manifest and the identity of its inputs; written last
    <out>/.lock                  held (flock) by the process writing the dir: `binarized_lock`

Version: `format` is "xlbtm-binarized/1". A done.json from before the inputs were recorded still reads: its
split is binarized again once, to record them.
"""

from __future__ import annotations

import os
from pathlib import Path

from xlbtm.errors import InputError
from xlbtm.formats.lock import DirLock
from xlbtm.io import read_json, write_json

FORMAT = "xlbtm-binarized/1"
DTYPE = "uint32"
MANIFEST = "manifest.json"
DONE = "done.json"
NOT_BINARIZED = "not binarized yet"  # split_status's reason when there is nothing to be stale (a first run)


def split_dir(out_dir: str | os.PathLike, split: str) -> Path:
    return Path(out_dir) / split


def bin_path(out_dir: str | os.PathLike, split: str, cluster: int) -> Path:
    return split_dir(out_dir, split) / f"cluster{cluster}.bin"


def idx_path(out_dir: str | os.PathLike, split: str, cluster: int) -> Path:
    return split_dir(out_dir, split) / f"cluster{cluster}.idx"


def _what_changed(old: dict, new: dict) -> str:
    parts = []
    for kind in ("corpus", "clusters"):
        a = {e[0]: e[1:] for e in old.get(kind, [])}
        b = {e[0]: e[1:] for e in new.get(kind, [])}
        added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
        for n, word in ((added, "added"), (removed, "removed"), (changed, "changed")):
            if n:
                parts.append(f"{len(n)} {kind} file(s) {word} (e.g. {n[0]})")
    return "; ".join(parts) or "input files changed"


def split_status(
    out_dir: str | os.PathLike, split: str, tokenizer_fp: str, clusterer_fp: str | None, inputs: dict
) -> tuple[dict | None, str]:
    """`(done.json, "")` when `split` is binarized from exactly these inputs, else `(None, why not)`."""
    done = split_dir(out_dir, split) / DONE
    if not done.is_file():
        return None, NOT_BINARIZED
    d = read_json(done)
    if d.get("tokenizer_fingerprint") != tokenizer_fp or d.get("clusterer_fingerprint") != clusterer_fp:
        return None, "binarized with another tokenizer or clusterer"
    if d.get("inputs") is None:  # written before inputs were recorded: redo once to record them
        return None, "binarized by an older xlbtm that did not record its input files"
    if d["inputs"] != inputs:
        return None, _what_changed(d["inputs"], inputs)
    return d, ""


def write_done(
    out_dir: str | os.PathLike, split: str, tokenizer_fp: str, clusterer_fp: str | None, inputs: dict, stats: dict
) -> None:
    """The split's resume marker (written after its streams are in place)."""
    write_json(
        split_dir(out_dir, split) / DONE,
        {
            "tokenizer_fingerprint": tokenizer_fp,
            "clusterer_fingerprint": clusterer_fp,
            "inputs": inputs,
            "stats": stats,
        },
    )


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(out_dir) / MANIFEST, {**manifest, "format": FORMAT})


def read_binarized_manifest(out_dir: str | os.PathLike) -> dict:
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        raise InputError("binarized manifest not found (run xlbtm.scripts.binarize first)", p)
    m = read_json(p)
    if m.get("format") != FORMAT:
        raise InputError(f"not an xlbtm binarized dir (format {m.get('format')!r})", p)
    return m


def binarized_lock(bin_dir: str | os.PathLike) -> DirLock:
    """The lock of a binarized dir (its streams and its `parallel/` pairs): whoever writes them holds it
    (`DirLock.held`), so runs sharing the dir (one --serialization-dir, one --binarized-dir) write it one at a
    time and the later ones find it done."""
    return DirLock(bin_dir, "being binarized")
