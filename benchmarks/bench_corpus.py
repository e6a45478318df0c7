"""Corpus reader throughput (docs/s, MB/s) on the manpages corpus, plain and gzip, next to a naive
`json.loads` loop over the same file in the same run; plus random access by sp_id.

    .venv/bin/python benchmarks/bench_corpus.py [--data-dir ../shared/corpora/manpages] [--repeats 5]

MB are of the uncompressed jsonl. Each row is the best of --repeats runs (least disturbed by other load).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from xlbtm.corpus import Corpus, iter_file

REPO = Path(__file__).resolve().parents[1]


def naive(path: Path) -> int:
    """What a user would write: text-mode lines, json.loads, take the text."""
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            n += len(obj["text"]) > -1
    return n


def xlbtm_reader(path: Path) -> int:
    n = 0
    for doc in iter_file(path, "bench"):
        n += len(doc.text) > -1
    return n


def best_of(fn, repeats: int) -> tuple[float, int]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "corpora" / "manpages"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--random-gets", type=int, default=2000)
    args = ap.parse_args()

    data = Path(args.data_dir)
    src = data / "train/00000/manpages.jsonl"
    mb = src.stat().st_size / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="xlbtm-bench-"))
    os.environ.setdefault("XLBTM_CACHE_DIR", str(tmp / "cache"))
    try:
        gz_data = tmp / "data"
        (gz_data / "train/00000").mkdir(parents=True)
        gz = gz_data / "train/00000/manpages.jsonl.gz"
        with open(src, "rb") as f, gzip.open(gz, "wb", compresslevel=6) as g:
            shutil.copyfileobj(f, g)

        rows = []
        for label, path in (("plain", src), ("gzip", gz)):
            t_naive, n = best_of(lambda path=path: naive(path), args.repeats)
            t_ours, n2 = best_of(lambda path=path: xlbtm_reader(path), args.repeats)
            assert n == n2, (n, n2)
            rows.append((f"stream {label}: naive json.loads loop", n / t_naive, mb / t_naive, 1.0))
            rows.append((f"stream {label}: xlbtm iter_file", n / t_ours, mb / t_ours, t_naive / t_ours))

        rng = random.Random(0)
        n_docs = n
        for label, root, rel in (
            ("plain", data, "train/00000/manpages.jsonl"),
            ("gzip", gz_data, "train/00000/manpages.jsonl.gz"),
        ):
            k = args.random_gets if label == "plain" else max(1, args.random_gets // 10)
            ids = [f"{rel}|{rng.randrange(n_docs)}" for _ in range(k)]
            c = Corpus(root)
            t = time.perf_counter()
            c.index(rel)
            t_index = time.perf_counter() - t

            def gets(ids=ids, c=c):
                return sum(len(c.get(s).text) for s in ids)

            t_get, nbytes = best_of(gets, 1)
            c.close()
            rows.append((f"random get {label} ({k} sp_ids; index build {t_index:.2f} s)", k / t_get, None, None))
            c = Corpus(root)
            c.index(rel)
            t_many, _ = best_of(lambda c=c, ids=ids: sum(len(d.text) for d in c.get_many(ids)), 1)
            c.close()
            rows.append((f"random get_many {label} (same sp_ids, read in file order)", k / t_many, None, None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# corpus reader: {src} ({n_docs} docs, {mb:.1f} MB), best of {args.repeats}")
    print(
        f"# python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print("| what | docs/s | MB/s | vs naive |")
    print("|---|---:|---:|---:|")
    for what, dps, mbs, ratio in rows:
        print(
            f"| {what} | {dps:,.0f} | {'' if mbs is None else f'{mbs:.1f}'} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
