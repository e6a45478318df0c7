"""Binarize a corpus into per-cluster, per-split token streams (tokenize every document once).

The layout, its manifest and each split's done.json are `xlbtm.formats.binarized` (their one reader and
writer).

Each document is stored as `</s>` followed by its tokens, so the concatenated stream already has `</s>`
between documents (the XGLM / metaseq convention) and CLM blocks are plain slices of the memmap.

Resumable at split granularity: a split with `done.json` whose fingerprints and inputs (every corpus and
cluster file of the split by path, size and mtime) match is skipped; one whose inputs changed -- documents
added, a file rewritten, the split re-clustered -- is redone, with a warning naming what changed. A split
interrupted half-way is redone from scratch (its files are only renamed into place at the end).
Documents without a cluster are an error (count + examples) unless `allow_unassigned=True`.

Parallel data (`binarize_pairs`): one pair stream per split (`xlbtm.formats.pairs`), or per split and cluster
when routed by cluster files of the pairs (`cluster --parallel-side`); resumable the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from xlbtm.cli import get_logger
from xlbtm.corpus import Corpus, relative_name, resolve_sp_id
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.binarized import (
    DONE,
    DTYPE,
    FORMAT,
    MANIFEST,
    NOT_BINARIZED,
    bin_path,
    idx_path,
    read_binarized_manifest,
    split_dir,
    split_status,
    write_done,
    write_manifest,
)
from xlbtm.formats.clusters import check_sources, cluster_files, iter_assignments, read_manifest
from xlbtm.formats.pairs import MANIFEST as PAIRS_MANIFEST
from xlbtm.formats.pairs import SIDES, read_pairs_manifest, side_paths, write_pairs_manifest
from xlbtm.io import atomic_path, refuse_overlap
from xlbtm.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from xlbtm.tokenizer import Tokenizer

log = get_logger("data")


@dataclass
class BinarizeResult:
    out_dir: Path
    manifest: dict
    skipped_splits: list[str]


# ------------------------------------------------------------------------------------------- workers

_WORKER_TOK: Tokenizer | None = None  # a pool worker's, set by _worker_init


def _worker_init(tokenizer_path: str) -> None:
    global _WORKER_TOK

    _WORKER_TOK = load_tokenizer(tokenizer_path)


def _worker_encode(texts: list[str]) -> list[list[int]]:
    assert _WORKER_TOK is not None  # the pool's initializer ran
    return _WORKER_TOK.encode_batch(texts)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parallel_encode(pool, batches: Iterator[list]) -> Iterator[tuple[list, list[list[int]]]]:
    """Encode batches on the pool with a bounded window, yielding results in input order (so the stream is
    identical whatever the number of workers) without reading the whole split into memory."""
    import collections

    pending: collections.deque = collections.deque()
    window = 4 * max(1, pool._processes)
    for b in batches:
        pending.append((b, pool.apply_async(_worker_encode, ([t for _, _, t in b],))))
        if len(pending) >= window:
            b0, r = pending.popleft()
            yield b0, r.get()
    while pending:
        b0, r = pending.popleft()
        yield b0, r.get()


# ---------------------------------------------------------------------------------------- assignments


def load_assignments(clusters_dir: Path, split: str, data_dir: Path) -> dict[str, int]:
    """sp_id (relative to data_dir) -> cluster for a split; c-BTM absolute sp_ids are normalized."""

    out: dict[str, int] = {}
    for sp_id, k in iter_assignments(clusters_dir, split):
        try:
            rel, line = resolve_sp_id(sp_id, data_dir)
        except ValueError as e:
            raise InputError(f"{e} (cluster files of split '{split}')", clusters_dir) from None
        out[f"{rel}|{line}"] = k
    return out


class Unassigned:
    """Documents (or pairs) without a cluster, counted, with a few sp_ids to show."""

    def __init__(self):
        self.count, self.examples = 0, []

    def add(self, sp_id: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(sp_id)

    def check(self, what: str, split: str, clusters_dir, question: str, allowed: bool, where) -> None:
        """None without a cluster, or `allowed` (a warning); else one InputError says how many, which, and
        `question` (what to check)."""
        if not self.count:
            return
        shown = ", ".join(self.examples)
        if not allowed:
            raise InputError(
                f"{self.count} {what} of split '{split}' have no cluster in {clusters_dir} "
                f"(e.g. {shown}); {question} Pass --allow-unassigned to drop them",
                where,
            )
        log.warning(f"binarize: dropped {self.count} unassigned {what} of split '{split}' (e.g. {shown})")


def route(items, assign: dict[str, int] | None, unassigned: Unassigned, default):
    """(cluster, item) of every item by its sp_id; without assignments (`assign` None) every item's cluster is
    `default`. Items the assignments do not name are counted in `unassigned` and left out."""
    for item in items:
        if assign is None:
            yield default, item
            continue
        k = assign.get(item.sp_id)
        if k is None:
            unassigned.add(item.sp_id)
            continue
        yield k, item


@contextlib.contextmanager
def temp_streams(streams: Sequence[tuple[Path, Path]]) -> Iterator[list[BinaryIO]]:
    """Open the temp file of every `(temp, final)` stream for writing; when the block succeeds they are closed
    and renamed onto their final names. On any failure -- a bad line, unassigned documents, a tokenizer error,
    Ctrl-C, a full disk -- they are closed and removed instead, so a failed split leaves nothing half-written
    (nothing hidden that only a later successful run would clean up)."""
    files: list[BinaryIO] = []
    try:
        for tmp, _ in streams:
            files.append(open(tmp, "wb"))
        yield files
        for f in files:
            f.close()
        for tmp, final in streams:
            os.replace(tmp, final)
    except BaseException:
        for f in files:
            f.close()
        for tmp, _ in streams:
            tmp.unlink(missing_ok=True)
        raise


def write_offsets(idx_file: Path, lengths: list[int]) -> None:
    """The `.idx` of a stream (int64 offsets, n + 1 entries) from its items' lengths, atomically."""
    import numpy as np

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    with atomic_path(idx_file) as tmp:
        with open(tmp, "wb") as f:
            f.write(offsets.tobytes())


# ------------------------------------------------------------------------------------------- up to date?


def split_inputs(data_dir: str | os.PathLike, split: str, clusters_dir: str | os.PathLike | None) -> dict:
    """What a split is binarized from, by identity: `[relative path, size, mtime_ns]` of every corpus file
    of the split and of every cluster file it is routed by. Cluster files made from another version of a
    corpus file are refused here (`check_sources`), before anything is binarized from them or a split
    binarized from them is taken as done: every reader of binarized data asks this first."""

    def ident(path: Path, root: Path) -> list:
        st = path.stat()
        return [relative_name(path, root), st.st_size, st.st_mtime_ns]

    files = Corpus(data_dir).files(split)
    out = {"corpus": [ident(p, Path(data_dir)) for p in files]}
    if clusters_dir is not None:
        check_sources(clusters_dir, split, ((p, relative_name(p, Path(data_dir))) for p in files), data_dir)
        out["clusters"] = [ident(p, Path(clusters_dir)) for p in cluster_files(clusters_dir, split)]
    return out


def inputs_unchanged(
    data_dir: str | os.PathLike, split: str, clusters_dir: str | os.PathLike | None, inputs: dict
) -> Callable[[], None]:
    """A check that the split's files are still the ones `inputs` recorded before they were read: a corpus or
    cluster file rewritten during binarization would otherwise publish streams of a mix of versions under a
    done.json that vouches for the old ones."""

    def check() -> None:
        if split_inputs(data_dir, split, clusters_dir) != inputs:
            raise InputError(
                f"the corpus or cluster files of split '{split}' changed while they were binarized; nothing was "
                "written. Re-run once nothing writes them any more",
                Path(data_dir) / split,
            )

    return check


# ------------------------------------------------------------------------------------------- binarize


def refuse_binarize_overlap(data_dir, out_dir, clusters_dir, tokenizer_path) -> None:
    """Binarized data must not be written into (or over) what it is read from; checked before anything is
    written there, the output dir's lock file included."""
    refuse_overlap(
        {"--output-dir": out_dir},
        {"--path-to-data": data_dir, "--path-to-clusters-dir": clusters_dir, "--tokenizer": tokenizer_path},
    )


def binarize(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer,
    *,
    splits: Sequence[str] = ("train", "valid"),
    clusters_dir: str | os.PathLike | None = None,
    num_clusters: int | None = None,
    workers: int = 0,
    batch_size: int = 256,
    allow_unassigned: bool = False,
    skip_bad_lines: bool = False,
) -> BinarizeResult:
    """Tokenize each split of `data_dir` into per-cluster token streams under `out_dir`.

    `tokenizer` is a loaded `xlbtm.tokenizer.Tokenizer` (its `.path` is reloaded by each of `workers`
    worker processes; `workers=0` tokenizes in this process). `clusters_dir=None` is the dense baseline:
    every document goes to cluster 0 of K=1.
    """

    refuse_binarize_overlap(data_dir, out_dir, clusters_dir, getattr(tokenizer, "path", None))
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    clusterer_fp = None
    if clusters_dir is not None:
        cm = read_manifest(clusters_dir)
        k_file = int(cm["num_clusters"])
        if num_clusters is not None and int(num_clusters) != k_file:
            raise UsageError(
                f"--num-clusters {num_clusters} does not match the {k_file} clusters of {clusters_dir}/manifest.json"
            )
        num_clusters, clusterer_fp = k_file, cm["fingerprint"]
    else:
        if num_clusters not in (None, 1):
            raise UsageError("--num-clusters > 1 needs --path-to-clusters-dir (cluster files)")
        num_clusters = 1
    if tokenizer.vocab_size >= 2**32:
        raise UsageError("vocabulary does not fit uint32")

    header = {
        "format": FORMAT,
        "dtype": DTYPE,
        "data_dir": str(data_dir.resolve()),
        "tokenizer": str(tokenizer.path),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "clusterer_fingerprint": clusterer_fp,
        "num_clusters": num_clusters,
        "eos_id": tokenizer.eos_id,
    }
    manifest_path = out_dir / MANIFEST
    manifest = dict(header, splits={})
    if manifest_path.is_file():
        old = read_binarized_manifest(out_dir)
        for key in ("tokenizer_fingerprint", "clusterer_fingerprint", "num_clusters"):
            if old.get(key) != header[key]:
                raise InputError(
                    f"binarized data here was made with another {key} ({old.get(key)!r} != "
                    f"{header[key]!r}); delete this directory or choose another output dir",
                    manifest_path,
                )
        manifest["splits"] = dict(old.get("splits", {}))

    corpus = Corpus(data_dir, skip_bad_lines=skip_bad_lines)
    skipped = []
    pool = None
    try:
        for split in splits:
            inputs = split_inputs(data_dir, split, clusters_dir)
            d, why = split_status(out_dir, split, header["tokenizer_fingerprint"], clusterer_fp, inputs)
            if d is not None:
                manifest["splits"][split] = d["stats"]
                skipped.append(split)
                log.info(f"binarize: split '{split}' already done ({split_dir(out_dir, split) / DONE}), skipping")
                continue
            if why != NOT_BINARIZED:
                log.warning(f"binarize: re-binarizing split '{split}': {why}")
            if workers > 0 and pool is None:
                import multiprocessing as mp

                pool = mp.get_context("spawn").Pool(workers, _worker_init, (str(tokenizer.path),))
            stats = _binarize_split(
                corpus,
                split,
                out_dir,
                tokenizer,
                num_clusters,
                None if clusters_dir is None else Path(clusters_dir),
                pool,
                batch_size,
                allow_unassigned,
                inputs_unchanged(data_dir, split, clusters_dir, inputs),
            )
            write_done(out_dir, split, header["tokenizer_fingerprint"], clusterer_fp, inputs, stats)
            manifest["splits"][split] = stats
            write_manifest(out_dir, manifest)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    write_manifest(out_dir, manifest)
    return BinarizeResult(out_dir, manifest, skipped)


def _binarize_split(
    corpus,
    split: str,
    out_dir: Path,
    tokenizer,
    K: int,
    clusters_dir: Path | None,
    pool,
    batch_size: int,
    allow_unassigned: bool,
    still_current: Callable[[], None],
) -> dict:
    """One split's per-cluster streams; `still_current()` raises if its inputs changed while it was read
    (checked before anything is renamed into place)."""
    import numpy as np

    assign = None if clusters_dir is None else load_assignments(clusters_dir, split, corpus.data_dir)
    sdir = split_dir(out_dir, split)
    sdir.mkdir(parents=True, exist_ok=True)

    unassigned = Unassigned()

    def routed() -> Iterator[tuple[int, str | None, str]]:
        for k, doc in route(corpus.iter_documents(split), assign, unassigned, default=0):
            yield k, doc.lang, doc.text

    # all clusters' streams are written in one pass over the split; temp names until the split is complete
    tmp_bins = [sdir / f".cluster{k}.bin.tmp" for k in range(K)]
    lengths: list[list[int]] = [[] for _ in range(K)]
    docs, toks = [0] * K, [0] * K
    langs: dict[str, list[int]] = {}
    eos = int(tokenizer.eos_id)
    with temp_streams([(t, bin_path(out_dir, split, k)) for k, t in enumerate(tmp_bins)]) as fbins:
        batches = _batches(routed(), batch_size)
        encoded: Iterator[tuple[list, list[list[int]]]]
        if pool is None:
            encoded = ((b, tokenizer.encode_batch([t for _, _, t in b])) for b in batches)
        else:
            encoded = _parallel_encode(pool, batches)
        for batch, ids_list in encoded:
            for (k, lang, _), ids in zip(batch, ids_list):
                arr = np.empty(len(ids) + 1, dtype=np.uint32)
                arr[0] = eos
                arr[1:] = ids
                fbins[k].write(arr.tobytes())
                lengths[k].append(len(arr))
                docs[k] += 1
                toks[k] += len(arr)
                key = lang if lang is not None else "null"
                langs.setdefault(key, [0] * K)[k] += len(arr)
        unassigned.check(
            "documents",
            split,
            clusters_dir,
            "were the cluster files made for this corpus?",
            allow_unassigned,
            corpus.data_dir / split,
        )
        still_current()
        for k in range(K):
            write_offsets(idx_path(out_dir, split, k), lengths[k])
    stats = {"documents": docs, "tokens": toks, "lang": langs, "unassigned": unassigned.count}
    log.info(f"binarize: split '{split}': {sum(docs)} documents, {sum(toks)} tokens in {K} clusters -> {sdir}")
    return stats


# ------------------------------------------------------------------------------------ parallel data


def binarize_pairs(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer,
    *,
    splits: Sequence[str] = ("train",),
    clusters_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    allow_unassigned: bool = False,
    skip_bad_lines: bool = False,
) -> dict:
    """Tokenize each split of parallel data (`<data>/<split>/<shard>/*.jsonl` of `{"src", "tgt", ...}`) into
    pair streams (`xlbtm.formats.pairs`): one per split, or with `clusters_dir` (cluster files of these pairs,
    from `cluster --parallel-side`) one per split and cluster; returns the manifest. A split that is already
    done from exactly these files is skipped, one whose files changed is redone (with a warning), as
    `binarize` does. Tokenized in this process: parallel data is usually small next to the monolingual corpus."""

    refuse_overlap(
        {"--binarized-dir (parallel data)": out_dir},
        {
            "--parallel-data": data_dir,
            "--path-to-parallel-clusters-dir": clusters_dir,
            "--tokenizer": getattr(tokenizer, "path", None),
        },
    )
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    K, clusterer_fp = None, None
    if clusters_dir is not None:
        cm = read_manifest(clusters_dir)
        K, clusterer_fp = int(cm["num_clusters"]), cm["fingerprint"]
    header = {
        "data_dir": str(data_dir.resolve()),
        "tokenizer": str(tokenizer.path),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "num_clusters": K,
        "clusterer_fingerprint": clusterer_fp,
    }
    manifest = dict(header, splits={})
    if (out_dir / PAIRS_MANIFEST).is_file():
        old = read_pairs_manifest(out_dir)
        if old.get("tokenizer_fingerprint") != tokenizer.fingerprint:
            raise InputError(
                "binarized parallel data here was made with another tokenizer; delete this directory "
                "or choose another --binarized-dir",
                out_dir / PAIRS_MANIFEST,
            )
        if (old["clusterer_fingerprint"], old["num_clusters"]) == (clusterer_fp, K):
            manifest["splits"] = dict(old.get("splits", {}))  # else every split is redone (done.json disagrees)
    corpus = Corpus(data_dir, skip_bad_lines=skip_bad_lines)
    for split in splits:
        inputs = split_inputs(data_dir, split, clusters_dir)
        d, why = split_status(out_dir, split, tokenizer.fingerprint, clusterer_fp, inputs)
        if d is not None:
            manifest["splits"][split] = d["stats"]
            log.info(f"binarize: parallel split '{split}' already done, skipping")
            continue
        if why != NOT_BINARIZED:
            log.warning(f"binarize: re-binarizing parallel split '{split}': {why}")
        stats = _binarize_pairs_split(
            corpus,
            split,
            out_dir,
            tokenizer,
            K,
            None if clusters_dir is None else Path(clusters_dir),
            batch_size,
            allow_unassigned,
            inputs_unchanged(data_dir, split, clusters_dir, inputs),
        )
        write_done(out_dir, split, tokenizer.fingerprint, clusterer_fp, inputs, stats)
        manifest["splits"][split] = stats
        write_pairs_manifest(out_dir, manifest)
        n = stats["pairs"] if K is None else sum(stats["pairs"])
        log.info(
            f"binarize: parallel split '{split}': {n} pairs"
            + ("" if K is None else f" in {K} clusters {stats['pairs']}")
            + f" -> {split_dir(out_dir, split)}"
        )
    write_pairs_manifest(out_dir, manifest)
    if corpus.stats.skipped:
        log.warning(f"binarize: parallel data: {corpus.stats.summary()}")
    return manifest


def _binarize_pairs_split(
    corpus,
    split: str,
    out_dir: Path,
    tokenizer,
    K: int | None,
    clusters_dir: Path | None,
    batch_size: int,
    allow_unassigned: bool,
    still_current: Callable[[], None],
) -> dict:
    """One split's pair streams (per cluster when `K`); temp names until every stream is complete, and
    `still_current()` (raises if the inputs changed while they were read) before they are renamed."""
    import numpy as np

    assign = None if clusters_dir is None else load_assignments(clusters_dir, split, corpus.data_dir)
    streams = [None] if K is None else list(range(K))  # None: the one unclustered stream
    split_dir(out_dir, split).mkdir(parents=True, exist_ok=True)
    paths = {(c, s): side_paths(out_dir, split, s, c) for c in streams for s in SIDES}
    tmp = {key: b.with_name(f".{b.name}.tmp") for key, (b, _) in paths.items()}
    lengths: dict[tuple[int | None, str], list[int]] = {key: [] for key in paths}
    langs: dict[str, list[int]] = {}
    unassigned = Unassigned()
    with temp_streams([(tmp[key], paths[key][0]) for key in tmp]) as opened:
        files = dict(zip(tmp, opened))
        for batch in _batches(route(corpus.iter_pairs(split), assign, unassigned, default=None), batch_size):
            for side in SIDES:
                for (c, _), ids in zip(batch, tokenizer.encode_batch([getattr(p, side) for _, p in batch])):
                    files[c, side].write(np.asarray(ids, dtype=np.uint32).tobytes())
                    lengths[c, side].append(len(ids))
            for c, p in batch:
                pair_langs = f"{p.src_lang or 'null'}-{p.tgt_lang or 'null'}"
                langs.setdefault(pair_langs, [0] * len(streams))[0 if c is None else c] += 1
        unassigned.check(
            "pairs",
            split,
            clusters_dir,
            "were these cluster files made from this parallel data with cluster --parallel-side?",
            allow_unassigned,
            corpus.data_dir / split,
        )
        still_current()
        for key, (_, idx_file) in paths.items():
            write_offsets(idx_file, lengths[key])
    counts: dict[str, Any] = {
        "pairs": [len(lengths[c, "src"]) for c in streams],
        "tokens": {s: [int(sum(lengths[c, s])) for c in streams] for s in SIDES},
        "langs": langs,
    }
    if K is None:  # unclustered stats are plain counts (the version-1 shape)
        counts = {
            "pairs": counts["pairs"][0],
            "tokens": {s: v[0] for s, v in counts["tokens"].items()},
            "langs": {k: v[0] for k, v in langs.items()},
        }
    return counts
