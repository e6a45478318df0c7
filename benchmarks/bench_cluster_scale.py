"""Clustering at scale (issue #19): fit time vs corpus size, and NMI(cluster, lang) on several corpora.

Two parts, each measured side by side in one run (methods interleaved per size / per seed):

- `--part scale`: featurizer fit (fit + transform of the sample, what `train_clusterer` does before k-means)
  at several sizes, for c-BTM's pipeline (`bench_cluster.make_baseline`), xlbtm word and xlbtm subword, with a
  breakdown of where the time goes (tokenize, vocabulary + count matrix, tf-idf, SVD, transform). k-means is
  not timed here: repeated copies are exact duplicate points, a worst case for the balanced assignment's tie
  breaking (tens of seconds at 13k) that real corpora do not have; its time on real corpora is in the nmi
  part. The sizes above the manpages train split (3,233 docs) are
  that split repeated in shuffled order (so the vocabulary does NOT grow with the size as on a real corpus:
  this measures scaling in documents at a fixed vocabulary; the vocabulary column says how large it is).
- `--part assign`: assignment as a whole job, as a user runs it: `python -m xlbtm.scripts.cluster` over a
  corpus dir (start-up, reading, featurizing, writing, the process pool) against c-BTM's assignment as a whole
  process (`--cbtm-job` below: load the pickled pipeline + centroids, read every file's jsonl, transform in
  batches of 10,000, nearest centroid in torch, write `{"sp_id", "cluster"}` lines with pandas, one file after
  the other: c-BTM's `cluster.py --run local`). The corpus is manpages train repeated to --assign-docs
  documents in shuffled order, in --assign-files files over two shards, so start-up does not dominate. Wall
  seconds and CPU seconds (user + sys of the process and its children, `getrusage(RUSAGE_CHILDREN)`), best
  of --rounds interleaved rounds; xlbtm's outputs are checked to be identical across worker counts.
- `--part nmi`: NMI(cluster, lang) of the fit documents assigned to their nearest centroid (what `cluster`
  does), K clusters, balanced and plain k-means on the same features, mean over --seeds, on: manpages train
  (21 languages); gettext target sides (16 languages, short UI strings; --gettext-per-lang random pairs per
  language); and "manpages-unequal": manpages train with 10 of its 21 languages (chosen by a seeded draw)
  subsampled 1 in 10.

The subword featurizer uses an 8,000-piece SentencePiece tokenizer trained here on manpages train + the
gettext sample (standing in for a multilingual seed model's tokenizer; untimed).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cluster_scale.py --part scale [--sizes 3233,13000,50000]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cluster_scale.py --part nmi [--seeds 3]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cluster_scale.py --part assign [--assign-docs 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import REPO, make_baseline, nearest  # noqa: E402  (c-BTM's pipeline, one copy)

CORPORA = REPO.parent / "shared" / "corpora"


class Timers:
    """Wall seconds spent inside wrapped functions, by key (nested keys are subtracted by the caller)."""

    def __init__(self):
        self.s = defaultdict(float)

    def wrap(self, key, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[key] += time.perf_counter() - t

        return timed


def fit_baseline(texts, seed):
    """c-BTM's Pipeline.fit_transform, step by step so each step is timed (same calls, same result)."""
    pipe = make_baseline(seed)
    tfidf, svd, norm = (pipe.named_steps[s] for s in ("tfidf", "svd", "normalizer"))
    t0 = time.perf_counter()
    x = tfidf.fit_transform(texts)
    t1 = time.perf_counter()
    z = svd.fit_transform(x)
    t2 = time.perf_counter()
    z = norm.fit_transform(z).astype(np.float32)
    t3 = time.perf_counter()
    parts = {"tokenize+vocab+counts+tfidf": t1 - t0, "svd": t2 - t1, "normalize": t3 - t2}
    return z, t3 - t0, parts, len(tfidf.vocabulary_)


def fit_xlbtm(feat, texts, langs, seed):
    """feat.fit + feat.transform with the library's stages timed through patched module functions."""
    import sklearn.decomposition as skd

    from xlbtm.cluster import featurize as fz

    tm = Timers()
    saved = (fz.word_tokens, fz.fit_lsa, fz.count_matrix, skd.TruncatedSVD.fit)
    fz.word_tokens = tm.wrap("tokenize", fz.word_tokens)
    fz.fit_lsa = tm.wrap("fit_lsa", fz.fit_lsa)
    fz.count_matrix = tm.wrap("counts", fz.count_matrix)
    skd.TruncatedSVD.fit = tm.wrap("svd", skd.TruncatedSVD.fit)
    if feat.kind == "subword":
        feat.encode_flat = tm.wrap("tokenize", feat.encode_flat)  # instance attribute: this object only
    try:
        t0 = time.perf_counter()
        feat.fit(texts, langs, seed=seed)
        t1 = time.perf_counter()
        x = feat.transform(texts)
        t2 = time.perf_counter()
    finally:
        fz.word_tokens, fz.fit_lsa, fz.count_matrix, skd.TruncatedSVD.fit = saved
        feat.__dict__.pop("encode_flat", None)
    s = tm.s
    if feat.kind == "word":
        tok = s["tokenize"]
        vocab = (t1 - t0) - tok - s["fit_lsa"]  # per-chunk unique, global index, df, stop words, column cut
    else:
        tok = s["tokenize"]
        vocab = s["counts"]
    parts = {
        "tokenize": tok,
        "vocab+counts": vocab,
        "tfidf": s["fit_lsa"] - s["svd"],
        "svd": s["svd"],
        "transform": t2 - t1,
    }
    return x, t2 - t0, parts, feat.lsa.vocab_size


def kmeans_seconds(x, k, seed, balanced=True):
    from xlbtm.cluster.kmeans import fit_kmeans

    t = time.perf_counter()
    km = fit_kmeans(x, k, balanced=balanced, seed=seed, device="cpu")
    return time.perf_counter() - t, km


# ------------------------------------------------------------------------------------------------ corpora


def manpages():
    from xlbtm.cluster.train import sample_documents

    s = sample_documents(CORPORA / "manpages" / "train", None)
    return s.texts, s.langs


def unequal(texts, langs, seed=0, n_small=10, keep=10):
    """manpages with `n_small` languages (seeded draw) subsampled to 1 document in `keep`."""
    rng = np.random.default_rng(seed)
    small = set(rng.choice(sorted(set(langs)), size=n_small, replace=False).tolist())
    seen = defaultdict(int)
    out_t, out_l = [], []
    for t, lang in zip(texts, langs):
        if lang in small:
            seen[lang] += 1
            if (seen[lang] - 1) % keep:
                continue
        out_t.append(t)
        out_l.append(lang)
    return out_t, out_l, sorted(small)


def gettext_tgt(per_lang, seed=0):
    """`per_lang` random target strings per language of the gettext train split (all when fewer)."""
    rng = np.random.default_rng(seed)
    texts, langs = [], []
    for p in sorted((CORPORA / "gettext" / "train").rglob("*.jsonl")):
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        idx = np.sort(rng.choice(len(rows), size=min(per_lang, len(rows)), replace=False))
        for i in idx.tolist():
            texts.append(rows[i]["tgt"])
            langs.append(rows[i]["tgt_lang"])
    return texts, langs


def subword_tokenizer(texts):
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    return load_tokenizer(train_sentencepiece(texts, Path(tempfile.mkdtemp()) / "tok", vocab_size=8000, seed=0))


# ------------------------------------------------------------------------------------------------- parts


def part_scale(args, tok, texts):
    from xlbtm.cluster.featurize import SubwordFeaturizer, WordFeaturizer

    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        reps = -(-size // len(texts))
        big = [texts[i % len(texts)] for i in rng.permutation(reps * len(texts))[:size]]
        print(f"size {size}: {sum(map(len, big)) / 1e6:.0f} M characters", flush=True)
        for name in ("c-BTM sklearn", "xlbtm word", "xlbtm subword"):
            if name == "c-BTM sklearn":
                x, total, parts, v = fit_baseline(big, 0)
            else:
                feat = WordFeaturizer() if name == "xlbtm word" else SubwordFeaturizer(tok)
                x, total, parts, v = fit_xlbtm(feat, big, None, 0)
            rows.append((size, name, total, parts, v))
            print(
                f"  {name}: {total:.1f} s {', '.join(f'{k} {t:.1f}' for k, t in parts.items())}; vocab {v}", flush=True
            )
    print("\n| docs | method | featurizer fit s | vs c-BTM | s per 1k docs | breakdown s | vocabulary |")
    print("|---:|---|---:|---:|---:|---|---:|")
    base = {r[0]: r[2] for r in rows if r[1] == "c-BTM sklearn"}
    for size, name, total, parts, v in rows:
        bd = ", ".join(f"{k} {t:.1f}" for k, t in parts.items())
        print(
            f"| {size:,} | {name} | {total:.1f} | {total / base[size]:.2f}x | {1000 * total / size:.2f} | {bd} | "
            f"{v:,} |"
        )


def _variant(spec: str) -> dict:
    """`max_df=1+stop_letterless=0` -> SubwordFeaturizer keyword arguments (the --subword-variants analysis)."""
    out = {}
    for kv in spec.split("+"):
        k, _, v = kv.partition("=")
        out[k] = float(v) if v else True
    return out


def part_nmi(args, tok, corpora):
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from xlbtm.cluster.featurize import SubwordFeaturizer, WordFeaturizer

    k = args.num_clusters
    print("\n(differences: mean ± sd over seeds, paired by seed; (n/N): seeds where the method >= c-BTM)")
    print(
        "| corpus | docs | languages | method | NMI balanced | NMI plain | NMI balanced - c-BTM | "
        "NMI plain - c-BTM | featurizer fit s | balanced k-means s |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for cname, (texts, langs) in corpora.items():
        res = defaultdict(lambda: defaultdict(list))
        variants = {"xlbtm subword": {}, **{f"xlbtm subword {v}": _variant(v) for v in args.subword_variants}}
        for s in range(args.seeds):
            for name in ("c-BTM sklearn", "xlbtm word", *variants):
                t = time.perf_counter()
                if name == "c-BTM sklearn":
                    x = fit_baseline(texts, s)[0]
                else:
                    feat = WordFeaturizer() if name == "xlbtm word" else SubwordFeaturizer(tok, **variants[name])
                    feat.fit(texts, langs, seed=s)
                    x = feat.transform(texts)
                res[name]["fit_s"].append(time.perf_counter() - t)
                for mode in ("balanced", "plain"):
                    km_s, km = kmeans_seconds(x, k, s, balanced=mode == "balanced")
                    res[name][mode].append(nmi(langs, nearest(x, km.centroids)))
                    res[name]["km_" + mode].append(km_s)
        base = {m: np.mean(res["c-BTM sklearn"][m]) for m in ("balanced", "plain")}
        ref = res["c-BTM sklearn"]
        for name, r in res.items():
            b, p = np.mean(r["balanced"]), np.mean(r["plain"])
            # paired by seed (the same seed drives both pipelines' SVD and k-means): sd of the difference, and
            # in how many seeds this method is at least c-BTM's
            db, dp = (np.array(r[m]) - np.array(ref[m]) for m in ("balanced", "plain"))
            print(
                f"| {cname} | {len(texts):,} | {len(set(langs))} | {name} | {b:.3f} | {p:.3f} | "
                f"{b - base['balanced']:+.3f} ± {db.std(ddof=1) if db.size > 1 else 0:.3f} ({(db >= 0).sum()}/{db.size}) | "
                f"{p - base['plain']:+.3f} ± {dp.std(ddof=1) if dp.size > 1 else 0:.3f} ({(dp >= 0).sum()}/{dp.size}) | "
                f"{np.mean(r['fit_s']):.1f} | {np.mean(r['km_balanced']):.1f} |",
                flush=True,
            )


def cbtm_job(clusterer_pkl, data_dir, out_dir, split):
    """c-BTM's cluster step as one process (its `--run local`): what the assign part times for the baseline.
    The imports are c-BTM's cluster.py's heavy ones (numpy, pandas, torch, scikit-learn)."""
    import pickle

    import pandas as pd
    import torch

    from xlbtm.corpus import find_jsonl_files

    with open(clusterer_pkl, "rb") as f:  # our own file, written by part_assign
        pipe, centroids = pickle.load(f)
    c = torch.from_numpy(centroids)
    root = Path(data_dir)
    for path in find_jsonl_files(root / split):
        rel = path.relative_to(root).as_posix()
        with open(path, encoding="utf-8") as f:
            rows = [(f"{rel}|{i}", json.loads(line)["text"]) for i, line in enumerate(f) if line.strip()]
        out = []
        for b in range(0, len(rows), 10000):
            batch = rows[b : b + 10000]
            x = torch.from_numpy(pipe.transform([t for _, t in batch]).astype(np.float32))
            d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]
            out += [{"sp_id": i, "cluster": int(k)} for (i, _), k in zip(batch, d.argmin(1).tolist())]
        dest = Path(out_dir) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(out).to_json(dest, lines=True, orient="records")


def sharded_corpus(dest: Path, n_docs: int, n_files: int, seed: int = 0) -> Path:
    """manpages train's lines repeated to `n_docs` in shuffled order, dealt round-robin to `n_files` files
    over two shards (<dest>/train/0000{0,1}/part<i>.jsonl)."""
    src = CORPORA / "manpages" / "train" / "00000" / "manpages.jsonl"
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines(keepends=True) if ln.strip()]
    order = np.random.default_rng(seed).permutation(-(-n_docs // len(lines)) * len(lines))[:n_docs]
    half = -(-n_files // 2)
    for f in range(n_files):
        p = dest / "train" / f"{f // half:05d}" / f"part{f % half}.jsonl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(lines[i % len(lines)] for i in order[f::n_files]), encoding="utf-8")
    return dest


def timed_run(cmd, env=None) -> tuple[float, float]:
    """(wall s, CPU s: user + sys of the command and every process it waited for)."""
    import resource
    import subprocess

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _tree_digest(d: Path) -> str:
    """sha256 over the cluster files (not the sidecars: they hold input mtimes) of an output dir."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(d.rglob("*.jsonl")):
        h.update(p.relative_to(d).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def part_assign(args, tok, texts):
    import pickle
    import shutil

    from xlbtm.cluster.kmeans import fit_kmeans
    from xlbtm.cluster.train import train_tfidf_clusterer

    tmp = Path(tempfile.mkdtemp(prefix="bench_assign_"))
    data = sharded_corpus(tmp / "corpus", args.assign_docs, args.assign_files)
    man = CORPORA / "manpages" / "train"
    for kind in ("word", "subword"):  # clusterers fit on manpages train (untimed), as a user's would be
        train_tfidf_clusterer(
            man,
            args.num_clusters,
            tmp / f"cl_{kind}",
            balanced=True,
            featurizer=kind,
            tokenizer=tok.path if kind == "subword" else None,
            device="cpu",
        )
    pipe = make_baseline(0)
    x = pipe.fit_transform(texts).astype(np.float32)
    km = fit_kmeans(x, args.num_clusters, balanced=True, seed=0, device="cpu")
    with open(tmp / "cbtm.pkl", "wb") as f:
        pickle.dump((pipe, km.centroids), f)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    methods = {
        "c-BTM (one process, its --run local)": [
            py,
            str(Path(__file__).resolve()),
            "--cbtm-job",
            str(tmp / "cbtm.pkl"),
            str(data),
            "{out}",
            "train",
        ]
    }
    for kind in ("word", "subword"):
        for w in args.assign_workers:
            extra = [] if w == "default" else ["--num-workers", w]
            methods[f"xlbtm {kind}, --num-workers {w}"] = [
                py,
                "-m",
                "xlbtm.scripts.cluster",
                "--data-dir",
                str(data),
                "--path-to-clusterer",
                str(tmp / f"cl_{kind}"),
                "--output-prefix",
                "{out}",
                "--split",
                "train",
                *extra,
            ]
    best = {m: (float("inf"), float("inf")) for m in methods}
    digests = defaultdict(set)
    for r in range(args.rounds):
        for name, cmd in methods.items():
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            wall, cpu = timed_run([c.replace("{out}", str(out)) for c in cmd], env)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            if name.startswith("xlbtm"):
                digests[name.split(",")[0]].add(_tree_digest(out))
            print(f"  round {r + 1} {name}: {wall:.2f} s wall, {cpu:.2f} CPU-s", flush=True)
    n = args.assign_docs
    print(
        f"\n{n:,} documents in {args.assign_files} files ({sum(p.stat().st_size for p in data.rglob('*.jsonl')) / 1e6:.0f} MB)"
        f", K={args.num_clusters}, best of {args.rounds} rounds"
    )
    print("| method | wall s | docs/s | vs c-BTM | CPU s | docs per CPU-s | vs c-BTM (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = best[next(iter(methods))]
    for name, (wall, cpu) in best.items():
        print(
            f"| {name} | {wall:.2f} | {n / wall:,.0f} | {base[0] / wall:.2f}x | {cpu:.2f} | {n / cpu:,.0f} | "
            f"{base[1] / cpu:.2f}x |"
        )
    for kind, d in sorted(digests.items()):
        print(f"{kind}: cluster files identical across worker counts and rounds: {len(d) == 1}")
    # the subword bound: sentencepiece's own encoder over the same texts, in this process, one thread
    import sentencepiece as spm

    from xlbtm.corpus import find_jsonl_files, iter_file
    from xlbtm.tokenizer import find_sp_model

    sp = spm.SentencePieceProcessor(model_file=str(find_sp_model(Path(tok.path))))
    corpus_texts = [d.text for p in find_jsonl_files(data / "train") for d in iter_file(p, p.name)]
    sp_cpu = float("inf")
    for _ in range(args.rounds):
        t = time.process_time()
        for b in range(0, len(corpus_texts), 512):
            sp.encode(corpus_texts[b : b + 512], num_threads=1, return_type="numpy")
        sp_cpu = min(sp_cpu, time.process_time() - t)
    print(
        f"sentencepiece encode alone (1 thread, batches of 512): {sp_cpu:.2f} CPU-s = "
        f"{sp_cpu / base[1]:.0%} of c-BTM's whole job: subword assignment is bounded by "
        f"{base[1] / sp_cpu:.2f}x c-BTM per CPU-second even if everything else were free"
    )
    shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--cbtm-job":
        return cbtm_job(*sys.argv[2:6])
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["scale", "nmi", "assign"], required=True)
    ap.add_argument("--sizes", default="3233,13000,50000")
    ap.add_argument("--num-clusters", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gettext-per-lang", type=int, default=1000)
    ap.add_argument("--assign-docs", type=int, default=50000)
    ap.add_argument("--assign-files", type=int, default=16)
    ap.add_argument("--assign-workers", default="default,1", help="assign part: --num-workers values")
    ap.add_argument("--rounds", type=int, default=3, help="assign part: interleaved rounds (best of)")
    ap.add_argument(
        "--subword-variants",
        default="",
        help="nmi part: other SubwordFeaturizer settings to compare, "
        "comma-separated, e.g. max_df=1+stop_letterless=0 (the defaults before #19),max_df=0.2",
    )
    ap.add_argument("--corpora", default="manpages,gettext tgt,manpages-unequal", help="nmi part: which corpora")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.assign_workers = args.assign_workers.split(",")
    args.subword_variants = [v for v in args.subword_variants.split(",") if v]
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    texts, langs = manpages()
    gt, gl = gettext_tgt(args.gettext_per_lang)
    tok = subword_tokenizer(texts + gt)
    print(
        f"machine: {platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); date {time.strftime('%Y-%m-%d')}; K="
        f"{args.num_clusters}",
        flush=True,
    )
    if args.part == "scale":
        part_scale(args, tok, texts)
    elif args.part == "assign":
        part_assign(args, tok, texts)
    else:
        ut, ul, small = unequal(texts, langs)
        print(f"manpages-unequal: subsampled 1 in 10: {', '.join(small)}", flush=True)
        corpora = {"manpages": (texts, langs), "gettext tgt": (gt, gl), "manpages-unequal": (ut, ul)}
        part_nmi(args, tok, {c: corpora[c] for c in args.corpora.split(",")})
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
