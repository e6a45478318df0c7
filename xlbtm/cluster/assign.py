"""Assign every document of a corpus split to a cluster (step 2 of the pipeline), in parallel jobs.

Per input file `<data>/<split>/<shard>/<f>.jsonl[.gz]` one output `<out>/<split>/<shard>/<f>.jsonl` with
`{"sp_id", "cluster"}` lines (see `xlbtm.formats.clusters`), written atomically, then a hidden per-file stats
sidecar. Re-running skips files whose sidecar matches the clusterer fingerprint and the input file (size +
mtime) and redoes the rest, so a killed run resumes. Workers stream their files in batches, so memory stays
flat as the corpus grows; the manifest is aggregated from the sidecars at the end (K x languages numbers).

`run="local"`: files on worker processes forked from the command's process (`_worker_pool`: why).
`run="slurm"`: a submitit job array via `xlbtm.launch.make_executor`, several files per array task (on the
task's CPUs, forked the same way); `wait_for` reports failures with log paths.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlbtm.cli import get_logger
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.lock import DirLock

log = get_logger("cluster")


@dataclass(frozen=True)
class FileJob:
    path: str  # input file
    rel: str  # corpus-relative path (the sp_id prefix)
    out: str  # cluster file
    signature: dict  # {"size", "mtime_ns"} of the input
    parallel_side: str | None = None  # parallel data: the side each pair is clustered by


def input_signature(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def current_signature(path: str | os.PathLike) -> dict | None:
    """The input's identity now, None when it is gone (deleted or renamed away while `cluster` ran)."""
    try:
        return input_signature(Path(path))
    except FileNotFoundError:
        return None


def changed_input(when: str) -> str:
    """The one line for a corpus file that changed under `cluster` (`when`: while it was read, or ran)."""
    return (
        f"this corpus file changed {when} (its size or mtime is not the one it had), so its cluster file would "
        "describe another version of it and send its documents to the wrong experts; refused. Re-run the same "
        "cluster command once nothing writes the corpus any more (it redoes only the changed files)"
    )


def is_done(job: FileJob, fingerprint: str) -> bool:
    from xlbtm.formats.clusters import read_sidecar

    s = read_sidecar(job.out) if Path(job.out).is_file() else None
    return (
        s is not None
        and s.get("fingerprint") == fingerprint
        and s.get("input") == job.signature
        and s.get("rel") == job.rel
        and s.get("parallel_side") == job.parallel_side
    )


# ------------------------------------------------------------------------------------------------ worker

_CLUSTERER: dict[str, Any] = {}  # artifact path -> its loaded clusterer (this process's one)


def _get_clusterer(path: str):
    if path not in _CLUSTERER:
        from xlbtm.cluster.artifact import load_clusterer

        _CLUSTERER.clear()
        _CLUSTERER[path] = load_clusterer(path)
    return _CLUSTERER[path]


def assign_file(clusterer, job: FileJob, *, batch_size: int = 512, skip_bad_lines: bool = False) -> dict:
    """Cluster one file; writes the cluster file and then its sidecar. Returns the sidecar dict."""
    from xlbtm.corpus import ReadStats, iter_file
    from xlbtm.formats.clusters import format_line, write_sidecar
    from xlbtm.io import atomic_open

    # the identity of the version read: the sidecar records it, and a file that changes before the read ends is
    # refused rather than published (its lines would be another version's, and binarize trusts the identity)
    signature = current_signature(job.path)
    if signature is None:
        raise InputError(changed_input("while `cluster` read it"), job.path)
    k = clusterer.num_clusters
    docs_per = [0] * k
    chars_per = [0] * k
    by_lang: dict[str, dict[str, list[int]]] = {}
    stats = ReadStats()

    def flush(batch, f):
        try:
            labels = clusterer.predict(batch)
        except InputError as e:  # documents name their file relative to the data dir: name the real one
            if e.path != job.rel:
                raise
            raise InputError(e.message, job.path, e.line) from None
        for doc, lab in zip(batch, labels):
            lab = int(lab)
            f.write(format_line(doc.sp_id, lab))
            n = len(doc.text)
            docs_per[lab] += 1
            chars_per[lab] += n
            entry = by_lang.setdefault(doc.lang or "null", {"documents": [0] * k, "chars": [0] * k})
            entry["documents"][lab] += 1
            entry["chars"][lab] += n
        batch.clear()

    with atomic_open(job.out) as f:
        batch = []
        for doc in iter_file(
            job.path, job.rel, skip_bad_lines=skip_bad_lines, stats=stats, parallel_side=job.parallel_side
        ):
            batch.append(doc)
            if len(batch) >= batch_size:
                flush(batch, f)
        if batch:
            flush(batch, f)
        if current_signature(job.path) != signature:  # inside the atomic write: the temp file is dropped
            raise InputError(changed_input("while `cluster` read it"), job.path)
    side = {
        "fingerprint": clusterer.fingerprint,
        "rel": job.rel,
        "input": signature,
        "documents": docs_per,
        "chars": chars_per,
        "lang": by_lang,
        "skipped_lines": stats.skipped,
        **({"parallel_side": job.parallel_side} if job.parallel_side else {}),
    }
    write_sidecar(job.out, side)
    return side


def _assign_job(clusterer_path: str, job: FileJob, batch_size: int, skip_bad_lines: bool) -> int:
    """One file in a worker: its documents, or -1 when another run finished it meanwhile."""
    c = _get_clusterer(clusterer_path)
    if is_done(job, c.fingerprint):
        return -1
    return sum(assign_file(c, job, batch_size=batch_size, skip_bad_lines=skip_bad_lines)["documents"])


def _warm_up(c, jobs: Sequence[FileJob], parallel_side: str | None) -> None:
    """Featurize the first documents once before the workers start, so the tokenizer or vocabulary is loaded
    and every lazy decision (the subword encoder, the word tokenizer's character table) is made here, once,
    and inherited by every forked worker instead of being made by each on its own first file."""
    if getattr(c, "featurizer_kind", None) is None:
        return
    from xlbtm.corpus import iter_file

    first = []
    for job in jobs:
        try:
            for doc in iter_file(job.path, job.rel, skip_bad_lines=True, parallel_side=parallel_side):
                first.append(doc)
                if len(first) >= 64:
                    break
        except Exception:  # noqa: BLE001 - an unreadable file is reported by its own worker, with its line
            pass
        if len(first) >= 64:
            break
    c.transform(first)


def _worker_pool(workers: int):
    """Worker processes forked from this one where the OS can fork (Linux, macOS), else threads.

    Why processes: about half of an assignment's CPU time holds the GIL (json parsing, `str.lower`, the
    per-document loop), so threads of one process gave only 1.1-1.3x on 2 cores (BENCHMARKS.md, Clustering
    at scale). Why fork: a forked worker inherits the loaded clusterer, tokenizer and imports, so it starts
    in milliseconds and loads nothing twice (a spawned one paid 1-3 CPU-s). Safe here: the workers never call
    torch (assignment is numpy / scipy; the `cluster` command does not even import it), so an OpenMP pool a
    calling program may hold is never touched in them, and BLAS runs single-threaded (`limit_threads`)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods():
        return cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("fork"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
    return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assign")


def _die_with_parent(parent: int) -> None:
    """A worker ends with the command that forked it. A command killed outright (SIGTERM, SIGKILL) runs no
    cleanup, and its workers would otherwise wait on the pool's queue forever (measured: two orphans still
    sleeping 20 s after `kill`). Linux: the kernel sends the worker SIGTERM when its parent dies; its
    half-written file stays a temp file, removed by the next run. Elsewhere: nothing to do."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_task(
    clusterer_path: str,
    jobs: Sequence[FileJob],
    batch_size: int = 512,
    skip_bad_lines: bool = False,
    workers: int | None = None,
    on_file=None,
) -> dict:
    """One local run or SLURM array task: cluster its files (skipping ones finished meanwhile) on `workers`
    worker processes forked from this one (default: one per CPU this process may use, at most one per file;
    `_worker_pool`: why processes, why fork). Returns {"files": files clustered, "documents": their
    documents}; `on_file(job, documents)` is called in the calling thread as each file ends (a file finished
    by another run meanwhile counts with 0 documents). BLAS runs single-threaded and sentencepiece gets
    CPUs // workers threads per file, so the workers never oversubscribe the cores (`xlbtm.cluster.threads`)."""
    import concurrent.futures as cf

    from xlbtm.cluster.threads import available_cpus, limit_threads

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    c = _get_clusterer(clusterer_path)
    jobs = list(jobs)
    workers = max(1, min(len(jobs), workers or available_cpus()))
    done = docs = 0

    def ended(job: FileJob, n: int) -> None:
        nonlocal done, docs
        done += n >= 0
        docs += max(n, 0)
        if on_file is not None:
            on_file(job, max(n, 0))

    # BLAS: one thread (per batch its ops are small, and OpenMP barriers stall on a busy machine: 2 threads
    # doubled the CPU time of a 1-file run under load); sentencepiece: the CPUs left per worker
    with limit_threads(1, encoder=max(1, available_cpus() // workers)):
        if workers == 1:
            for job in jobs:
                ended(job, _assign_job(clusterer_path, job, batch_size, skip_bad_lines))
        else:
            import gc

            _warm_up(c, jobs, jobs[0].parallel_side if jobs else None)
            gc.freeze()  # forked workers share this heap: a collection in them would touch (so copy) its pages
            pool = _worker_pool(workers)
            try:
                futs = {pool.submit(_assign_job, clusterer_path, j, batch_size, skip_bad_lines): j for j in jobs}
                for fut in cf.as_completed(futs):
                    ended(futs[fut], fut.result())  # re-raises a worker's InputError here
            finally:  # on an error or Ctrl-C: files not started are dropped, running ones end (atomic writes)
                pool.shutdown(wait=True, cancel_futures=True)
                gc.unfreeze()
    return {"files": done, "documents": docs}


class Progress:
    """`assigned 12/40 files, 51,200 docs, 3,900 docs/s (13 s): <what>` as files complete. docs/s is over the
    whole job so far (start-up and reading included): what a user waits for. Small runs (<= `every_file`
    files) log every completion; larger ones at most every `every_s` seconds, and always the last."""

    def __init__(self, total_files: int, *, every_s: float = 5.0, every_file: int = 20, clock=None):
        import time

        self.total = total_files
        self.every_s = every_s
        self.every_file = every_file
        self.clock = clock or time.monotonic
        self.t0 = self.clock()
        self.last: float | None = None  # when the last line was logged
        self.files = self.docs = 0

    def add(self, files: int, docs: int, what: str) -> None:
        self.files += files
        self.docs += docs
        now = self.clock()
        due = (
            self.total <= self.every_file
            or self.files >= self.total
            or self.last is None
            or now - self.last >= self.every_s
        )
        if due:
            self.last = now
            dt = now - self.t0
            rate = f"{self.docs / dt:,.0f} docs/s" if dt > 0 else "- docs/s"
            log.info(f"assigned {self.files}/{self.total} files, {self.docs:,} docs, {rate} ({dt:.0f} s): {what}")


# ------------------------------------------------------------------------------------------------ driver


def _clean_stale_tmp(out: Path) -> None:
    """Temp files a killed run left behind (`.<name>.<random>.tmp`, see xlbtm.io.atomic_path)."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.*.tmp"):
            p.unlink(missing_ok=True)


def _remove_orphans(output_prefix: Path, split: str, jobs: Sequence[FileJob]) -> None:
    """Cluster files we wrote earlier for input files that no longer exist would be read back as part of
    the split: remove them (only ours, recognized by their sidecar); warn about foreign ones."""
    from xlbtm.corpus import find_jsonl_files
    from xlbtm.formats.clusters import stats_path

    d = output_prefix / split
    if not d.is_dir():
        return
    wanted = {Path(j.out).resolve() for j in jobs}
    for f in find_jsonl_files(d):
        if f.resolve() in wanted:
            continue
        side = stats_path(f)
        if side.is_file():
            log.warning(f"removing {f}: its input file is no longer in the corpus")
            f.unlink()
            side.unlink()
        else:
            log.warning(f"{f} does not match any input file of split '{split}' and will be read with it")


def plan(
    data_dir, output_prefix, split: str, fingerprint: str, parallel_side: str | None = None
) -> tuple[list[FileJob], list[FileJob]]:
    """(all file jobs of the split, the ones still to do)."""
    from xlbtm.corpus import Corpus
    from xlbtm.formats.clusters import cluster_file_path

    corpus = Corpus(data_dir)
    jobs = []
    for p in corpus.files(split):
        rel = corpus.rel(p)
        jobs.append(FileJob(str(p), rel, str(cluster_file_path(output_prefix, rel)), input_signature(p), parallel_side))
    todo = [j for j in jobs if not is_done(j, fingerprint)]
    return jobs, todo


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, math.ceil(len(items) / max(1, n)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def assign_corpus(
    data_dir,
    clusterer_path,
    output_prefix,
    split: str,
    *,
    run: str = "local",
    num_clusters: int | None = None,
    job_dir=None,
    workers: int | None = None,
    max_array_tasks: int = 128,
    batch_size: int = 512,
    skip_bad_lines: bool = False,
    timeout_min: int = 240,
    site=None,
    parallel_side: str | None = None,
) -> dict:
    """Assign a split; returns the manifest (also written to `<output_prefix>/manifest.json`). `parallel_side`:
    the corpus is parallel data, each pair clustered by that side (`xlbtm.corpus.reader.pair_as_document`)."""
    from xlbtm.io import refuse_overlap

    refuse_overlap(
        {"--output-prefix": output_prefix, "--job-dir": job_dir},
        {"--data-dir": data_dir, "--path-to-clusterer": clusterer_path},
    )
    from xlbtm.cluster.artifact import load_clusterer

    clusterer_path = str(Path(clusterer_path).resolve())
    clusterer = load_clusterer(clusterer_path)  # verifies the artifact once, up front
    if num_clusters is not None and num_clusters != clusterer.num_clusters:
        raise UsageError(
            f"--num-clusters {num_clusters} disagrees with the clusterer at {clusterer_path}, which "
            f"has {clusterer.num_clusters} clusters (drop --num-clusters or pick another clusterer)"
        )
    if run not in ("local", "slurm"):
        raise UsageError(f"--run must be local or slurm, got {run!r}")
    output_prefix = Path(output_prefix)
    # one `cluster` at a time per output dir: a second one would delete the first's temp files as stale and
    # both would rewrite manifest.json; it waits, saying for whom, then finds the files done
    with DirLock(output_prefix, "being clustered").held(log.info):
        return _assign_locked(
            data_dir,
            clusterer,
            clusterer_path,
            output_prefix,
            split,
            run=run,
            job_dir=job_dir,
            workers=workers,
            max_array_tasks=max_array_tasks,
            batch_size=batch_size,
            skip_bad_lines=skip_bad_lines,
            timeout_min=timeout_min,
            site=site,
            parallel_side=parallel_side,
        )


def _assign_locked(
    data_dir,
    clusterer,
    clusterer_path: str,
    output_prefix: Path,
    split: str,
    *,
    run: str,
    job_dir,
    workers,
    max_array_tasks: int,
    batch_size: int,
    skip_bad_lines: bool,
    timeout_min: int,
    site,
    parallel_side: str | None,
) -> dict:
    jobs, todo = plan(data_dir, output_prefix, split, clusterer.fingerprint, parallel_side)
    log.info(
        f"{split}: {len(jobs)} files, {len(jobs) - len(todo)} already done, {len(todo)} to do "
        f"({clusterer.kind}, K={clusterer.num_clusters})"
    )
    for j in todo:
        _clean_stale_tmp(Path(j.out))
    _remove_orphans(output_prefix, split, jobs)
    if todo:
        if run == "local":
            _run_local(clusterer, todo, workers, batch_size, skip_bad_lines)
        else:
            _run_slurm(
                clusterer_path,
                todo,
                job_dir or output_prefix / "jobs",
                max_array_tasks,
                batch_size,
                skip_bad_lines,
                timeout_min,
                site,
            )
    return write_split_manifest(output_prefix, split, jobs, clusterer, data_dir, parallel_side)


def _run_local(clusterer, todo, workers, batch_size, skip_bad_lines) -> None:
    clusterer_path = str(clusterer.path)
    _CLUSTERER.clear()
    _CLUSTERER[clusterer_path] = clusterer  # the one assign_corpus loaded and verified (never a stale cache)
    progress = Progress(len(todo))
    run_task(
        clusterer_path,
        todo,
        batch_size,
        skip_bad_lines,
        workers=workers,
        on_file=lambda job, docs: progress.add(1, docs, job.rel),
    )


def _run_slurm(
    clusterer_path, todo, job_dir, max_array_tasks, batch_size, skip_bad_lines, timeout_min, site=None
) -> None:
    from xlbtm.launch import make_executor, wait_for

    tasks = _chunks(todo, max_array_tasks)
    ex = make_executor(
        "slurm",
        job_dir,
        name="xlbtm-cluster",
        cpus_per_task=2,
        timeout_min=timeout_min,
        mem_gb=8,
        array_parallelism=max_array_tasks,
        site=site,
    )
    n = len(tasks)
    jobs = ex.map_array(run_task, [clusterer_path] * n, tasks, [batch_size] * n, [skip_bad_lines] * n)
    log.info(f"submitted {n} array tasks ({len(todo)} files); logs under {job_dir}")
    progress = Progress(len(todo))
    ended = [0]

    def finished(i: int, result: dict) -> None:  # called by wait_for as each array task's result arrives
        ended[0] += 1
        progress.add(len(tasks[i]), result["documents"], f"array task {jobs[i].job_id} ({ended[0]}/{n} tasks)")

    wait_for(jobs, what="cluster assignment", on_result=finished)


def write_split_manifest(
    output_prefix: Path, split: str, jobs: Sequence[FileJob], clusterer, data_dir, parallel_side: str | None = None
) -> dict:
    """Aggregate the split's sidecars into manifest.json (adding/replacing this split's entry)."""
    from xlbtm.formats.clusters import FORMAT, MANIFEST, read_manifest, read_sidecar, write_manifest

    k = clusterer.num_clusters
    docs = [0] * k
    chars = [0] * k
    langs: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"documents": [0] * k, "chars": [0] * k})
    skipped = 0
    for j in jobs:
        # against the input as it is now, not as planned: a file replaced after its cluster file was written is
        # not published in the manifest as if the cluster file described it
        now = current_signature(j.path)
        if now != j.signature:
            raise InputError(changed_input("while `cluster` ran"), j.path)
        if not is_done(j, clusterer.fingerprint):
            raise InputError(
                "cluster file is missing or stale after assignment (did another cluster command write this "
                "--output-prefix meanwhile?); re-run this cluster command",
                j.out,
            )
        s = read_sidecar(j.out, strict=True)
        assert s is not None  # is_done just read it
        skipped += s.get("skipped_lines", 0)
        for i in range(k):
            docs[i] += s["documents"][i]
            chars[i] += s["chars"][i]
        for lang, e in s["lang"].items():
            for i in range(k):
                langs[lang]["documents"][i] += e["documents"][i]
                langs[lang]["chars"][i] += e["chars"][i]
    entry = {
        "documents": docs,
        "chars": chars,
        "lang": dict(sorted(langs.items())),
        "files": [j.rel for j in jobs],
        "skipped_lines": skipped,
    }
    path = output_prefix / MANIFEST
    manifest = None
    if path.is_file():
        try:
            manifest = read_manifest(output_prefix)
        except InputError:  # a broken manifest is rebuilt from the sidecars, its other splits dropped
            manifest = None
        if manifest and manifest.get("fingerprint") != clusterer.fingerprint:
            log.warning(f"{path} was written for another clusterer; dropping its other splits")
            manifest = None
        elif manifest and manifest.get("parallel_side") != parallel_side:
            log.warning(f"{path} was written for another --parallel-side; dropping its other splits")
            manifest = None
    splits = dict(manifest.get("splits", {})) if manifest else {}
    splits[split] = entry
    manifest = {
        "format": FORMAT,
        "fingerprint": clusterer.fingerprint,
        "num_clusters": k,
        "kind": clusterer.kind,
        "clusterer": str(clusterer.path),
        "data_dir": str(Path(data_dir).resolve()),
        **({"parallel_side": parallel_side} if parallel_side else {}),
        "documents": [sum(s["documents"][i] for s in splits.values()) for i in range(k)],
        "chars": [sum(s["chars"][i] for s in splits.values()) for i in range(k)],
        "splits": dict(sorted(splits.items())),
    }
    write_manifest(output_prefix, manifest)
    return manifest
