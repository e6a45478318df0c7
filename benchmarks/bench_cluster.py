"""Clustering benchmark: fit time, assignment docs/s and NMI(cluster, lang) on the manpages corpus.

Compares, in one run on the same documents:
- baseline: c-BTM's pipeline, faithfully: NumberNormalizingVectorizer (TfidfVectorizer whose tokens starting
  with a digit become "#NUMBER", English stop words + "#NUMBER") -> TruncatedSVD(100) -> Normalizer, then
  nearest centroid. Its centroids come from the same balanced k-means as ours, so fit-time differences are
  the featurizer's.
- xlbtm word: vectorized hashed word tokenizer + embedding-bag projection.
- xlbtm subword: a SentencePiece tokenizer (8k pieces, trained here on the train split) as the "seed"
  tokenizer.
Assignment throughput = featurize + nearest centroid over the train split in batches of 512 documents,
single process (torch/BLAS and the sentencepiece encoder may use both cores; scikit-learn's tokenizer uses
one), best of --repeats, runs interleaved so machine load hits every method alike. Also reported: docs per
CPU-second (process_time, all threads), the per-core efficiency, which is what counts when every core
already runs its own worker process (a corpus with many files). NMI is measured on the train split (fit sample) and the held-out valid split, averaged
over --seeds k-means/SVD seeds.

    .venv/bin/python benchmarks/bench_cluster.py [--num-clusters 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def number_normalizer(tokens):
    return ("#NUMBER" if token[0].isdigit() else token for token in tokens)


class NumberNormalizingVectorizer(TfidfVectorizer):
    # at module level so a fitted pipeline can be pickled: the whole-job benchmark (bench_cluster_scale.py
    # --part assign) hands it to a separate process, as c-BTM's cluster step loads its tfidf.pkl
    def build_tokenizer(self):
        tokenize = super().build_tokenizer()
        return lambda doc: list(number_normalizer(tokenize(doc)))


def make_baseline(seed: int):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction import text
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    stop = list(text.ENGLISH_STOP_WORDS.union(["#NUMBER"]))
    return Pipeline(
        [
            ("tfidf", NumberNormalizingVectorizer(stop_words=stop)),
            ("svd", TruncatedSVD(n_components=100, random_state=seed)),
            ("normalizer", Normalizer(copy=False)),
        ]
    )


def nearest(x, c):
    d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
    return d.argmin(1)


def batched(fn, texts, bs=512):
    out = []
    for i in range(0, len(texts), bs):
        out.append(fn(texts[i : i + bs]))
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "corpora" / "manpages"))
    ap.add_argument("--num-clusters", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=4, help="fits per method for the NMI mean")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from xlbtm.cluster.featurize import SubwordFeaturizer, WordFeaturizer
    from xlbtm.cluster.kmeans import fit_kmeans
    from xlbtm.cluster.train import sample_documents
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    data = Path(args.data_dir)
    train = sample_documents(data / "train", None)
    valid = sample_documents(data / "valid", None)
    k = args.num_clusters
    print(
        f"train {len(train.texts)} docs, valid {len(valid.texts)} docs, K={k}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp())
    tok = load_tokenizer(train_sentencepiece(train.texts, tmp / "tok", vocab_size=8000, seed=0))

    methods = {}
    seeds = [args.seed + i for i in range(args.seeds)]  # NMI depends on the seed: report the mean

    def fit(name, make_feat):
        nmis_t, nmis_v = [], []
        for s in seeds:
            t = time.perf_counter()
            feat = make_feat(s)
            if name.startswith("baseline"):
                x = feat.fit_transform(train.texts).astype(np.float32)
                assign = (lambda f: lambda c: lambda b: nearest(f.transform(b).astype(np.float32), c))(feat)
            else:
                feat.fit(train.texts, train.langs, seed=s)
                x = feat.transform(train.texts)
                assign = (lambda f: lambda c: lambda b: nearest(f.transform(b), c))(feat)
            t_feat = time.perf_counter() - t
            km = fit_kmeans(x, k, balanced=True, seed=s, device="cpu")
            t_total = time.perf_counter() - t
            a = assign(km.centroids)
            nmis_t.append(nmi(train.langs, nearest(x, km.centroids)))
            nmis_v.append(nmi(valid.langs, batched(a, valid.texts)))
            if s == seeds[0]:
                methods[name] = dict(fit_feat=t_feat, fit_total=t_total, assign=a)
        methods[name].update(nmi_train=float(np.mean(nmis_t)), nmi_valid=float(np.mean(nmis_v)))

    fit("baseline (c-BTM sklearn)", make_baseline)
    fit("xlbtm word", lambda s: WordFeaturizer())
    fit("xlbtm word + learned stop words (lang_stop_df=0.9)", lambda s: WordFeaturizer(lang_stop_df=0.9))
    fit("xlbtm subword", lambda s: SubwordFeaturizer(tok))

    # ---- assignment throughput (interleaved repeats, best of)
    best = {name: float("inf") for name in methods}
    best_cpu = {name: float("inf") for name in methods}  # CPU seconds of all this process's threads
    labels = {}
    for _ in range(args.repeats):
        for name, m in methods.items():
            t, c = time.perf_counter(), time.process_time()
            labels[name] = batched(m["assign"], train.texts)
            best[name] = min(best[name], time.perf_counter() - t)
            best_cpu[name] = min(best_cpu[name], time.process_time() - c)
    base = "baseline (c-BTM sklearn)"
    rows = []
    for name, m in methods.items():
        dps = len(train.texts) / best[name]
        rows.append(
            (
                name,
                m["fit_feat"],
                m["fit_total"],
                dps,
                best[base] / best[name],
                len(train.texts) / best_cpu[name],
                best_cpu[base] / best_cpu[name],
                m["nmi_train"],
                m["nmi_valid"],
                np.bincount(labels[name], minlength=k).max() / (len(train.texts) / k),
            )
        )
    print(
        f"\nmachine: {platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}, "
        f"torch {torch.__version__}; date {time.strftime('%Y-%m-%d')}"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")
    print(
        "| method | featurizer fit s | fit incl. balanced k-means s | assign docs/s | vs baseline | "
        "assign docs per CPU-s | vs baseline (CPU) | NMI lang train (mean over seeds) | NMI lang valid | "
        "largest cluster / mean (nearest) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:,.0f} | {r[4]:.2f}x | {r[5]:,.0f} | {r[6]:.2f}x | "
            f"{r[7]:.3f} | {r[8]:.3f} | {r[9]:.2f} |"
        )


if __name__ == "__main__":
    main()
