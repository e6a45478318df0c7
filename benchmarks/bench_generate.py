"""Generation throughput (results go to BENCHMARKS.md, section "Generation"): tokens/s of one model vs an ensemble
of K = 4 experts with top-1 routing (one expert runs per token) and with every expert, side by side in one run.

Setup: demo corpus, a SentencePiece tokenizer and a subword TF-IDF clusterer (K = 4) fit on it, four random
experts of one small XGLM size (default d=256, 4 layers), greedy decoding of --new-tokens tokens per prompt
with end-of-text ignored (every run generates exactly the same number of tokens), KV cache per expert,
routing updated per token. Min over --repeats interleaved runs after one warm-up.

    .venv/bin/python benchmarks/bench_generate.py [--new-tokens 128] [--batch 1,8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build(root: Path, K: int, d_model: int, n_layers: int, max_positions: int, vocab: int) -> dict:
    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.corpus import Corpus
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.formats.consolidated import save_consolidated
    from xlbtm.io import write_json
    from xlbtm.models import build_model, get_preset
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    write_demo_corpus(root / "data", n_train=400, n_valid=20, seed=0)
    texts = [d.text for d in Corpus(root / "data").iter_documents("train")]
    tok = load_tokenizer(train_sentencepiece(texts, root / "tok", vocab_size=vocab, seed=0))
    clus, _ = train_tfidf_clusterer(root / "data", K, root / "clusterer", tokenizer=tok.path, max_docs=400)
    args = get_preset(
        "debug",
        vocab_size=tok.vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=4,
        ffn_dim=4 * d_model,
        max_positions=max_positions,
    )
    for k in range(K):
        torch.manual_seed(k)
        run = root / "experts" / f"demo.cluster{k}"
        run.mkdir(parents=True)
        write_json(
            run / "expert.json",
            {
                "format": "xlbtm-expert/1",
                "cluster": k,
                "num_clusters": K,
                "clusterer_fingerprint": clus.fingerprint,
                "objective": "clm",
                "model_args": args.to_dict(),
                "tokenizer": str(tok.path),
                "tokenizer_fingerprint": tok.fingerprint,
                "seed_model": "random",
                "run_name": run.name,
                "data": {},
            },
        )
        save_consolidated(run / "consolidated.pt", build_model(args).state_dict(), args)
    return {
        "tok": tok,
        "experts": root / "experts",
        "clusterer": root / "clusterer",
        "args": args,
        "valid": [d.text for d in Corpus(root / "data").iter_documents("valid")],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--prompt-tokens", type=int, default=32)
    a = p.parse_args(argv)
    from xlbtm.cli import setup_logging
    from xlbtm.ensemble.mixture import MixtureLM

    setup_logging("bench", "WARNING")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        env = build(Path(tmp), 4, a.d_model, a.layers, a.prompt_tokens + a.new_tokens + 8, a.vocab)
        tok = env["tok"]
        prompts_all = [tok.encode(t)[: a.prompt_tokens] for t in env["valid"]]
        one = env["experts"] / "demo.cluster0" / "consolidated.pt"
        setups = {
            "one model (dense)": MixtureLM.load(model_paths=[str(one)], device="cpu"),
            "ensemble K=4, top-1": MixtureLM.load(
                experts_dir=str(env["experts"]), clusterer=str(env["clusterer"]), temperature=0.1, topk=1, device="cpu"
            ),
            "ensemble K=4, all experts": MixtureLM.load(
                experts_dir=str(env["experts"]), clusterer=str(env["clusterer"]), temperature=0.1, topk=-1, device="cpu"
            ),
        }
        batches = [int(b) for b in a.batch.split(",")]
        best = {(n, b): float("inf") for n in setups for b in batches}
        active = {}
        for rep in range(a.repeats + 1):  # rep 0 warms up
            for b in batches:
                prompts = [prompts_all[(i + rep) % len(prompts_all)] for i in range(b)]
                for name, lm in setups.items():
                    lm.stats["gen_expert_rows"] = []
                    t0 = time.perf_counter()
                    gens = lm.generate(prompts, max_new_tokens=a.new_tokens, stop_at_eos=False)
                    dt = time.perf_counter() - t0
                    assert all(len(g.ids) == a.new_tokens for g in gens)
                    if rep:
                        best[name, b] = min(best[name, b], dt)
                        active[name, b] = float(np.mean(lm.stats["gen_expert_rows"])) / b
        arch = env["args"]
        print(
            f"XGLM d={arch.d_model} layers={arch.n_layers} ffn={arch.ffn_dim} vocab={arch.vocab_size}; prompt "
            f"{a.prompt_tokens} tokens, {a.new_tokens} new tokens, greedy; min of {a.repeats}; "
            f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, 1 thread\n"
        )
        print("| setup | batch | tokens/s | expert forwards per token | vs one model |")
        print("|---|---:|---:|---:|---:|")
        for b in batches:
            base = b * a.new_tokens / best["one model (dense)", b]
            for name in setups:
                tps = b * a.new_tokens / best[name, b]
                print(f"| {name} | {b} | {tps:,.0f} | {active[name, b]:.2f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
