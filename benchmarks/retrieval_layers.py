"""Diagnostic for bench_tlm.py's retrieval numbers: accuracy@1 (gettext valid, pools of one language) when the
sentence vector pools the states after layer L of each dense model (L0 = the embedding output), centered and raw.

    .venv/bin/python benchmarks/retrieval_layers.py [--out bench_tlm_out]

Reads the models bench_tlm.py trained under --out (and `random/`, a debug-xlmr at its init, if present).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_tlm_out")
    a = ap.parse_args()

    import torch

    from xlbtm.ensemble.experts import load_model, read_expert
    from xlbtm.ensemble.retrieval import embed, load_parallel, retrieval_accuracy
    from xlbtm.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    out = Path(a.out)
    tok = load_tokenizer(out / "tokenizer")
    ps = load_parallel(out / "pairs", "valid", tok, 126)
    runs = {
        "random init": out / "random/1_clusters/random.cluster0",
        "seed": out / "seed/1_clusters/seed.cluster0",
        "MLM dense": out / "mlm/dense/1_clusters/dense.cluster0",
        "MLM+TLM dense": out / "mlm_tlm/dense/1_clusters/dense.cluster0",
    }
    print("| model | " + " | ".join(f"after layer {L}: centered / raw" for L in range(3)) + " |")
    print("|---|" + "---:|" * 3)
    for name, run in runs.items():
        if not run.is_dir():
            continue
        model, args = load_model(read_expert(run))
        layers, cells = model.layers, []
        for L in range(len(layers) + 1):
            model.layers = layers[:L]  # the states after layer L (the model is only read)
            v = embed(model, args, ps.src_ids + ps.tgt_ids)
            s, t = v[: len(ps)], v[len(ps) :]
            c, r = (retrieval_accuracy(s, t, ps, 1000, centering)["accuracy"] for centering in (True, False))
            cells.append(f"{c:.3f} / {r:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
