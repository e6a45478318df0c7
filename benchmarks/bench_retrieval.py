"""Sentence embedding for cross-lingual retrieval (eval_ensemble --parallel-data): batched vs one at a time.

    XLBTM_LOG_LEVEL=WARNING .venv/bin/python benchmarks/bench_retrieval.py [--sentences 2000] [--repeats 3]

Sentences: both sides of the gettext valid pairs (the first --sentences of them), tokenized with a small
SentencePiece trained here on gettext train; model: the debug-xlmr preset (random weights, max_positions 128).
Prints sentences/s of `retrieval.embed` (length-sorted batches of <= --batch-tokens padded tokens) and of a
loop that encodes each sentence alone, the ratio, and the largest difference between their vectors.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GETTEXT = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "gettext"


def main():
    from xlbtm.corpus import Corpus
    from xlbtm.ensemble.retrieval import embed
    from xlbtm.models import build_model, get_preset
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    ap = argparse.ArgumentParser()
    ap.add_argument("--gettext", default=str(GETTEXT))
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    corpus = Corpus(a.gettext)
    train = [t for p in itertools.islice(corpus.iter_pairs("train"), 10000) for t in (p.src, p.tgt)]
    with tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer(train_sentencepiece(train, Path(tmp) / "tok", vocab_size=4000, seed=0))
        texts = [t for p in corpus.iter_pairs("valid") for t in (p.src, p.tgt)][: a.sentences]
        ids = [x[:126] for x in tok.encode_batch(texts)]
    args = get_preset("debug-xlmr", vocab_size=tok.vocab_size, max_positions=128)
    torch.manual_seed(0)
    model = build_model(args).eval()

    def one_at_a_time():
        return np.concatenate([embed(model, args, [x], batch_tokens=a.batch_tokens) for x in ids])

    def batched():
        return embed(model, args, ids, batch_tokens=a.batch_tokens)

    times = {"one at a time": [], "batched": []}
    out = {}
    for _ in range(a.repeats):  # interleaved, min of the repeats
        for name, fn in (("one at a time", one_at_a_time), ("batched", batched)):
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    n = len(ids)
    base = n / min(times["one at a time"])
    print(f"{n} sentences, mean {np.mean([len(x) for x in ids]):.1f} tokens, batch_tokens {a.batch_tokens}")
    print("| embedding | sentences/s | vs one at a time |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {n / min(ts):,.0f} | {n / min(ts) / base:.2f}x |")
    print(f"max |batched - one at a time| = {np.abs(out['batched'] - out['one at a time']).max():.2e}")


if __name__ == "__main__":
    main()
