"""What per-sample dropout masks cost: forward + backward with dropout 0.1 everywhere, masks from the global RNG
(one draw per batch, one fused attention call) against `xlbtm.models.dropout.sample_seeds` (one draw per row
and site, attention row by row), interleaved A B A B in one process, median of the repeats.

    .venv/bin/python benchmarks/bench_dropout.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from xlbtm.models import build_model, get_preset
    from xlbtm.models.dropout import sample_seeds
    from xlbtm.models.loss import model_loss

    shapes = {
        "debug (d 64, 2 layers), B 8 x T 128": dict(d_model=64, n_layers=2, n_heads=4, ffn_dim=256, B=8, T=128),
        "d 256, 4 layers, B 8 x T 512": dict(d_model=256, n_layers=4, n_heads=4, ffn_dim=1024, B=8, T=512),
    }
    for name, sh in shapes.items():
        B, T = sh.pop("B"), sh.pop("T")
        torch.manual_seed(0)
        model = build_model(
            get_preset(
                "debug",
                vocab_size=2000,
                max_positions=T,
                dropout=0.1,
                attention_dropout=0.1,
                activation_dropout=0.1,
                **sh,
            )
        ).train()
        x = torch.randint(4, 2000, (B, T))
        y = torch.roll(x, -1, 1)
        seeds = list(range(B))

        # this iteration's model and batch bound as defaults (the loop rebinds the names)
        def step(per_sample: bool, model=model, x=x, y=y, seeds=seeds) -> float:
            t0 = time.perf_counter()
            with sample_seeds(seeds if per_sample else None):
                model_loss(model, x, None, y).backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        step(False), step(True)  # warm-up
        times = {False: [], True: []}
        for _ in range(a.repeats):
            for per_sample in (False, True):
                times[per_sample].append(step(per_sample))
        g, s = statistics.median(times[False]), statistics.median(times[True])
        print(
            json.dumps(
                {
                    "shape": name,
                    "global_rng_ms": round(1e3 * g, 1),
                    "per_sample_ms": round(1e3 * s, 1),
                    "cost": round(s / g, 2),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
