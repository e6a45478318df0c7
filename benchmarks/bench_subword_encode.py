"""Subword featurizer encoding: the sentencepiece C++ encoder (`SubwordFeaturizer`'s fast path) against the
tokenizer's HF `encode_batch`, on the same texts, interleaved A B in one process, median of the repeats.

    .venv/bin/python benchmarks/bench_subword_encode.py --data-dir ../shared/corpora/manpages
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="corpus (default: the built-in demo corpus)")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    from xlbtm.cluster.featurize import SubwordFeaturizer
    from xlbtm.corpus import Corpus
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    tmp = Path(tempfile.mkdtemp())
    data = Path(a.data_dir) if a.data_dir else tmp / "data"
    if not a.data_dir:
        from xlbtm.demo_corpus import write_demo_corpus

        write_demo_corpus(data, n_train=a.docs, n_valid=20)
    texts = [d.text for _, d in zip(range(a.docs), Corpus(data).iter_documents("train"))]
    tok = load_tokenizer(train_sentencepiece(texts, tmp / "tok", vocab_size=4000))
    fast = SubwordFeaturizer(tok)
    assert fast._fast_encoder(texts) is not None, "no sentencepiece fast path for this tokenizer"
    runs = {"hf": [], "sentencepiece": []}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        tok.encode_batch(texts)
        runs["hf"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fast.encode(texts)
        runs["sentencepiece"].append(time.perf_counter() - t0)
    hf, sp = statistics.median(runs["hf"]), statistics.median(runs["sentencepiece"])
    chars = sum(map(len, texts))
    print(
        json.dumps(
            {
                "docs": len(texts),
                "chars": chars,
                "hf_s": round(hf, 3),
                "sentencepiece_s": round(sp, 3),
                "speedup": round(hf / sp, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
