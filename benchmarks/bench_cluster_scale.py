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
- `--part nmi`: NMI(cluster, lang) of the fit documents assigned to their nearest centroid (what `cluster`
  does), K clusters, balanced and plain k-means on the same features, mean over --seeds, on: manpages train
  (21 languages); gettext target sides (16 languages, short UI strings; --gettext-per-lang random pairs per
  language); and "manpages-unequal": manpages train with 10 of its 21 languages (chosen by a seeded draw)
  subsampled 1 in 10.

The subword featurizer uses an 8,000-piece SentencePiece tokenizer trained here on manpages train + the
gettext sample (standing in for a multilingual seed model's tokenizer; untimed).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cluster_scale.py --part scale [--sizes 3233,13000,50000]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cluster_scale.py --part nmi [--seeds 3]
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
    parts = {"tokenize": tok, "vocab+counts": vocab, "tfidf": s["fit_lsa"] - s["svd"], "svd": s["svd"],
             "transform": t2 - t1}
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
            print(f"  {name}: {total:.1f} s {', '.join(f'{k} {t:.1f}' for k, t in parts.items())}; vocab {v}",
                  flush=True)
    print("\n| docs | method | featurizer fit s | vs c-BTM | s per 1k docs | breakdown s | vocabulary |")
    print("|---:|---|---:|---:|---:|---|---:|")
    base = {r[0]: r[2] for r in rows if r[1] == "c-BTM sklearn"}
    for size, name, total, parts, v in rows:
        bd = ", ".join(f"{k} {t:.1f}" for k, t in parts.items())
        print(f"| {size:,} | {name} | {total:.1f} | {total / base[size]:.2f}x | {1000 * total / size:.2f} | {bd} | "
              f"{v:,} |")


def part_nmi(args, tok, corpora):
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from xlbtm.cluster.featurize import SubwordFeaturizer, WordFeaturizer

    k = args.num_clusters
    print("\n| corpus | docs | languages | method | NMI balanced | NMI plain | NMI balanced - c-BTM | "
          "NMI plain - c-BTM | featurizer fit s | balanced k-means s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for cname, (texts, langs) in corpora.items():
        res = defaultdict(lambda: defaultdict(list))
        for s in range(args.seeds):
            for name in ("c-BTM sklearn", "xlbtm word", "xlbtm subword"):
                t = time.perf_counter()
                if name == "c-BTM sklearn":
                    x = fit_baseline(texts, s)[0]
                else:
                    feat = WordFeaturizer() if name == "xlbtm word" else SubwordFeaturizer(tok)
                    feat.fit(texts, langs, seed=s)
                    x = feat.transform(texts)
                res[name]["fit_s"].append(time.perf_counter() - t)
                for mode in ("balanced", "plain"):
                    km_s, km = kmeans_seconds(x, k, s, balanced=mode == "balanced")
                    res[name][mode].append(nmi(langs, nearest(x, km.centroids)))
                    res[name]["km_" + mode].append(km_s)
        base = {m: np.mean(res["c-BTM sklearn"][m]) for m in ("balanced", "plain")}
        for name, r in res.items():
            b, p = np.mean(r["balanced"]), np.mean(r["plain"])
            print(f"| {cname} | {len(texts):,} | {len(set(langs))} | {name} | {b:.3f} | {p:.3f} | "
                  f"{b - base['balanced']:+.3f} | {p - base['plain']:+.3f} | {np.mean(r['fit_s']):.1f} | "
                  f"{np.mean(r['km_balanced']):.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["scale", "nmi"], required=True)
    ap.add_argument("--sizes", default="3233,13000,50000")
    ap.add_argument("--num-clusters", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gettext-per-lang", type=int, default=1000)
    ap.add_argument("--corpora", default="manpages,gettext tgt,manpages-unequal", help="nmi part: which corpora")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from xlbtm.cluster.words import _class_table

    _class_table()  # one-time table build, not part of any timing
    texts, langs = manpages()
    gt, gl = gettext_tgt(args.gettext_per_lang)
    tok = subword_tokenizer(texts + gt)
    print(f"machine: {platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); date {time.strftime('%Y-%m-%d')}; K="
          f"{args.num_clusters}", flush=True)
    if args.part == "scale":
        part_scale(args, tok, texts)
    else:
        ut, ul, small = unequal(texts, langs)
        print(f"manpages-unequal: subsampled 1 in 10: {', '.join(small)}", flush=True)
        corpora = {"manpages": (texts, langs), "gettext tgt": (gt, gl), "manpages-unequal": (ut, ul)}
        part_nmi(args, tok, {c: corpora[c] for c in args.corpora.split(",")})
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
