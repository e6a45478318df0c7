"""Cluster files: which cluster every document of a corpus belongs to (contract 3).

Layout (c-BTM format, mirroring the corpus):

    <clusters>/<split>/<shard>/<file>.jsonl      one line per document: {"sp_id": "<rel>|<line>", "cluster": k}
    <clusters>/manifest.json                     clusterer fingerprint, K, per-cluster counts (see below)
    <clusters>/<split>/<shard>/.<file>.jsonl.stats.json
                                                 per-file sidecar (counts + fingerprints) that makes assignment
                                                 resumable; written after the cluster file, both atomically:
                                                 {"format": "xlbtm-cluster-sidecar/1", "fingerprint", "rel",
                                                  "input": {"size", "mtime_ns"}, "documents": [..K],
                                                  "chars": [..K], "lang": {...}, "skipped_lines"
                                                  [, "parallel_side"]}

A corpus file `train/00000/a.jsonl.gz` maps to `<clusters>/train/00000/a.jsonl` (cluster files are never gzipped).

manifest.json:
    {
      "format": "xlbtm-clusters/1",
      "fingerprint": "<clusterer content fingerprint>",
      "num_clusters": K,
      "kind": "tfidf" | "typological",
      "clusterer": "<path of the clusterer dir>",
      "data_dir": "<corpus root>",
      "parallel_side": "src" | "tgt" | "both",   # only for parallel data (cluster --parallel-side)
      "documents": [n_0, ..., n_{K-1}],       # summed over every split in the manifest
      "chars":     [c_0, ..., c_{K-1}],
      "splits": {
        "train": {
          "documents": [..K], "chars": [..K],
          "lang": {"en": {"documents": [..K], "chars": [..K]}, ...},   # documents without lang under "null"
          "files": ["train/00000/a.jsonl", ...]                         # corpus-relative input files
        },
        "valid": {...}
      }
    }
Assigning another split into the same `<clusters>` dir adds/replaces that split's entry; the fingerprint must
match (one clusterer per clusters dir). Parallel data (`--parallel-side`) is assigned pair by pair, with the
pair's sp_id; the optional `parallel_side` fields say which side was read (absent: monolingual documents),
so these files stay readable by any version-1 reader. Files written before the version fields existed (a sidecar without
"format") read as version 1; an unknown version is refused.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.corpus import find_jsonl_files
from xlbtm.errors import InputError
from xlbtm.io import atomic_open, read_json, write_json

MANIFEST = "manifest.json"
FORMAT = "xlbtm-clusters/1"
SIDECAR_FORMAT = "xlbtm-cluster-sidecar/1"

log = get_logger("cluster")


# ------------------------------------------------------------------------------------------------ paths


def cluster_rel_path(corpus_rel: str) -> str:
    """`train/00000/a.jsonl(.gz)` -> `train/00000/a.jsonl` (relative to the clusters dir)."""
    return corpus_rel[:-3] if corpus_rel.endswith(".jsonl.gz") else corpus_rel


def cluster_file_path(clusters_dir: str | os.PathLike, corpus_rel: str) -> Path:
    return Path(clusters_dir) / cluster_rel_path(corpus_rel)


def stats_path(cluster_file: str | os.PathLike) -> Path:
    p = Path(cluster_file)
    return p.parent / f".{p.name}.stats.json"


def cluster_files(clusters_dir: str | os.PathLike, split: str) -> list[Path]:
    """The cluster files of a split in corpus order (numeric shard order)."""
    d = Path(clusters_dir) / split
    if not d.is_dir():
        raise InputError(f"no cluster files for split '{split}' (run xlbtm.scripts.cluster with --split {split})", d)
    files = find_jsonl_files(d)
    if not files:
        raise InputError(f"no cluster files (*.jsonl) for split '{split}'", d)
    return files


# ----------------------------------------------------------------------------------------------- writing


def format_line(sp_id: str, cluster: int) -> str:
    return json.dumps({"sp_id": sp_id, "cluster": int(cluster)}, ensure_ascii=False) + "\n"


def write_cluster_file(path: str | os.PathLike, assignments: Iterable[tuple[str, int]]) -> int:
    """Write `(sp_id, cluster)` pairs atomically; returns the number of lines written. Streams (flat memory)."""
    n = 0
    with atomic_open(path) as f:
        for sp_id, k in assignments:
            f.write(format_line(sp_id, k))
            n += 1
    return n


def write_sidecar(cluster_file: str | os.PathLike, side: dict) -> Path:
    """The cluster file's sidecar, written after the file itself (so a sidecar vouches for a complete file)."""
    path = stats_path(cluster_file)
    write_json(path, {"format": SIDECAR_FORMAT, **side}, indent=0)
    return path


def write_manifest(clusters_dir: str | os.PathLike, manifest: dict) -> Path:
    path = Path(clusters_dir) / MANIFEST
    write_json(path, manifest)
    return path


# ----------------------------------------------------------------------------------------------- reading


def read_manifest(clusters_dir: str | os.PathLike) -> dict:
    """The manifest of a clusters dir; a missing or malformed one is an InputError naming the file."""
    path = Path(clusters_dir) / MANIFEST
    if not path.is_file():
        raise InputError(
            "cluster manifest not found (was xlbtm.scripts.cluster run to completion for this --output-prefix?)", path
        )
    m = read_json(path)
    if not isinstance(m, dict) or "num_clusters" not in m or "fingerprint" not in m:
        raise InputError("not an xlbtm cluster manifest (needs 'num_clusters' and 'fingerprint')", path)
    if m.get("format", FORMAT) != FORMAT:
        raise InputError(
            f"cluster manifest format {m['format']!r} is not one this xlbtm reads ({FORMAT}): "
            "re-run xlbtm.scripts.cluster, or use the xlbtm that wrote it",
            path,
        )
    return m


def read_cluster_file(path: str | os.PathLike, num_clusters: int | None = None) -> Iterator[tuple[str, int]]:
    """Stream `(sp_id, cluster)` from one cluster file; malformed lines raise InputError with path:line.

    Accepts c-BTM files too (same fields; `cluster` may be an int, a numeric string, or a 1-element list).
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError("cluster file not found", path) from None
    with f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON in cluster file: {e.msg}", path, i) from None
            if not isinstance(obj, dict) or "sp_id" not in obj or "cluster" not in obj:
                raise InputError("cluster file line needs 'sp_id' and 'cluster'", path, i)
            k = obj["cluster"]
            if isinstance(k, list) and len(k) == 1:
                k = k[0]
            try:
                k = int(k)
            except (TypeError, ValueError):
                raise InputError(f"cluster must be an integer, got {obj['cluster']!r}", path, i) from None
            if k < 0 or (num_clusters is not None and k >= num_clusters):
                raise InputError(f"cluster {k} out of range [0, {num_clusters})", path, i)
            yield str(obj["sp_id"]), k


def read_sidecar(cluster_file: str | os.PathLike, strict: bool = False) -> dict | None:
    """The sidecar of a cluster file, or None when it has none. An unreadable one is None too (the file is
    redone), or with `strict` an InputError naming it."""
    path = stats_path(cluster_file)
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
        if not isinstance(side, dict) or side.get("format", SIDECAR_FORMAT) != SIDECAR_FORMAT:
            raise ValueError(side.get("format") if isinstance(side, dict) else "not an object")
    except (OSError, ValueError):
        if strict:
            raise InputError(
                "unreadable cluster-file sidecar; re-run xlbtm.scripts.cluster to rewrite it", path
            ) from None
        return None
    return side


def iter_assignments(clusters_dir: str | os.PathLike, split: str) -> Iterator[tuple[str, int]]:
    """Every `(sp_id, cluster)` of a split, file by file in corpus order. Streams; checks K from the manifest
    when there is one (c-BTM dirs without a manifest are read as-is)."""
    clusters_dir = Path(clusters_dir)
    if not (clusters_dir / MANIFEST).is_file():
        for path in cluster_files(clusters_dir, split):
            yield from read_cluster_file(path)
        return
    m = read_manifest(clusters_dir)
    if isinstance(m.get("splits"), dict) and split not in m["splits"]:
        # xlbtm.scripts.cluster drops a split from the manifest when another clusterer writes the dir: its
        # files on disk are from the old clusterer and must not be read as this one's
        raise InputError(
            f"split '{split}' is not in this manifest: its cluster files were made by another "
            f"clusterer, or never finished. Re-run xlbtm.scripts.cluster --split {split} with "
            f"--path-to-clusterer {m.get('clusterer', '<the clusterer>')}",
            clusters_dir / MANIFEST,
        )
    for path in cluster_files(clusters_dir, split):
        check_clusterer(path, m["fingerprint"], split)
        yield from read_cluster_file(path, m["num_clusters"])


def check_clusterer(path: Path, fingerprint: str, split: str) -> None:
    """A cluster file whose sidecar names another clusterer than the manifest is stale: refuse it."""
    side = read_sidecar(path, strict=True)
    if side is None:  # c-BTM files and hand-made ones have no sidecar: nothing to compare
        return
    got = side.get("fingerprint")
    if got != fingerprint:
        raise InputError(
            f"cluster file was made by clusterer {str(got)[:12]}, not by this dir's clusterer "
            f"{fingerprint[:12]} (manifest.json): re-run xlbtm.scripts.cluster --split {split}",
            path,
        )


# ------------------------------------------------------------------------------------ against the corpus

_WARNED_NO_INPUT: set[tuple[str, str]] = set()  # (clusters dir, split) already warned about (once a process)


def check_sources(
    clusters_dir: str | os.PathLike, split: str, sources: Iterable[tuple[Path, str]], data_dir: str | os.PathLike
) -> None:
    """Refuse cluster files made from another version of the corpus files they route: each sidecar records
    the identity (size, mtime_ns) of the input `cluster` read, and a corpus file that is not that any more (replaced
    or rewritten since, or while `cluster` ran) would have its lines sent to the clusters of the old lines --
    same sp_ids, other documents, no unassigned ones to notice. `sources`: (corpus file, corpus-relative path)
    of the split. Cheap: one stat and one small sidecar read per file. Files without a sidecar (c-BTM's,
    hand-made) have nothing to compare; sidecars without the identity get one warning."""
    stale: list[Path] = []
    unknown = 0
    for path, rel in sources:
        side = read_sidecar(cluster_file_path(clusters_dir, rel))
        if side is None:
            continue
        recorded = side.get("input")
        if not isinstance(recorded, dict) or "size" not in recorded or "mtime_ns" not in recorded:
            unknown += 1
            continue
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]):
            stale.append(path)
    if stale:
        more = f" (and {len(stale) - 1} more file(s) of split '{split}')" if len(stale) > 1 else ""
        raise InputError(
            f"the cluster files in {clusters_dir} were made from another version of this corpus file{more} "
            "(its size or mtime changed since `cluster` read it): its documents would go to the wrong experts. "
            f"Re-cluster the changed files: {cluster_command(clusters_dir, split, data_dir)}",
            stale[0],
        )
    key = (str(Path(clusters_dir).resolve()), split)
    if unknown and key not in _WARNED_NO_INPUT:
        _WARNED_NO_INPUT.add(key)
        log.warning(
            f"{unknown} cluster file(s) of split '{split}' in {clusters_dir} do not record which version of the "
            "corpus they were made from (an older xlbtm wrote them): they cannot be checked against the corpus. "
            f"If the corpus changed since, re-run {cluster_command(clusters_dir, split, data_dir)}"
        )


def cluster_command(clusters_dir: str | os.PathLike, split: str, data_dir: str | os.PathLike) -> str:
    """The `cluster` command that (re)writes this split of `clusters_dir` from `data_dir`, with the flags its
    manifest implies (the clusterer, --parallel-side, --skip-bad-lines when lines were skipped)."""
    m: dict = {}
    if (Path(clusters_dir) / MANIFEST).is_file():
        try:
            m = read_manifest(clusters_dir)
        except InputError:
            m = {}
    entry = m.get("splits", {}).get(split, {}) if isinstance(m.get("splits"), dict) else {}
    argv = ["python", "-m", "xlbtm.scripts.cluster", "--data-dir", str(data_dir)]
    argv += ["--path-to-clusterer", str(m.get("clusterer", "<the clusterer dir>"))]
    argv += ["--output-prefix", str(clusters_dir), "--split", split]
    if m.get("parallel_side"):
        argv += ["--parallel-side", str(m["parallel_side"])]
    if isinstance(entry, dict) and entry.get("skipped_lines"):
        argv.append("--skip-bad-lines")
    return shlex.join(argv)
