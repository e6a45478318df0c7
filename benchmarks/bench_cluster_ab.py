"""A/B of the subword assignment path: featurize.py at an older git revision vs the working tree, side by side
with the c-BTM baseline (same tokenizer, same centroids, interleaved rounds), plus a bitwise-equality check.

    .venv/bin/python benchmarks/bench_cluster_ab.py --old-rev 49bef0e [--rounds 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def load_old(rev: str, tmp: Path):
    src = subprocess.run(
        ["git", "show", f"{rev}:xlbtm/cluster/featurize.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    (tmp / "old_featurize.py").write_text(src)
    spec = importlib.util.spec_from_file_location("old_featurize", tmp / "old_featurize.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_featurize"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "corpora" / "manpages"))
    ap.add_argument("--old-rev", required=True)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from bench_cluster import batched, make_baseline, nearest

    from xlbtm.cluster.featurize import SubwordFeaturizer
    from xlbtm.cluster.kmeans import fit_kmeans
    from xlbtm.cluster.train import sample_documents
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    tmp = Path(tempfile.mkdtemp())
    old = load_old(args.old_rev, tmp)
    texts = sample_documents(Path(args.data_dir) / "train", None).texts
    tok = load_tokenizer(train_sentencepiece(texts, tmp / "tok", vocab_size=8000, seed=0))
    new_f = SubwordFeaturizer(tok).fit(texts, seed=0)
    old_f = old.SubwordFeaturizer(tok, old.Lsa(new_f.lsa.idf, new_f.lsa.components))
    cent = fit_kmeans(new_f.transform(texts), 8, balanced=True, seed=0, device="cpu").centroids
    base = make_baseline(0)
    cb = fit_kmeans(base.fit_transform(texts).astype(np.float32), 8, balanced=True, seed=0, device="cpu").centroids
    same = np.array_equal(new_f.transform(texts), old_f.transform(texts))
    ref = np.array_equal(new_f.transform(texts), new_f.lsa.featurize_token_ids(new_f.encode(texts)))
    print(f"features bitwise equal: old vs new {same}, new vs featurize_token_ids(encode) {ref}")
    fns = {
        "baseline": lambda b: nearest(base.transform(b).astype(np.float32), cb),
        "old": lambda b: nearest(old_f.transform(b), cent),
        "new": lambda b: nearest(new_f.transform(b), cent),
    }
    for fn in fns.values():
        fn(texts[:64])
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for r in range(args.rounds):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            batched(fn, texts)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
        print(
            f"round {r}: "
            + "  ".join(f"{k} {len(texts) / wall[k][-1]:,.0f} docs/s" for k in fns)
            + f"  old {wall['baseline'][-1] / wall['old'][-1]:.2f}x new {wall['baseline'][-1] / wall['new'][-1]:.2f}x"
            f"  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    for name, d in (("wall", wall), ("CPU", cpu)):
        b = {k: min(v) for k, v in d.items()}
        print(
            f"best-of {name}: baseline {len(texts) / b['baseline']:,.0f} docs/s, old {b['baseline'] / b['old']:.2f}x, "
            f"new {b['baseline'] / b['new']:.2f}x"
        )


if __name__ == "__main__":
    main()
