"""Peak memory and tokens/s of one training step at XGLM's real vocabulary (V = 256,008): the plain loss
(full [B*T, V] logits, then an fp32 cross-entropy, as `_forward_loss` did) against the chunked linear +
cross-entropy (`model_loss(model, x, None, y, loss_fn=...)`, `xlbtm/models/loss.py`) at one or more chunk
budgets (`--chunk-mib`: MiB of fp32 logits per chunk, or `auto` = the trainer's default, derived from the
weight's size: `xlbtm.models.loss.chunk_tokens`).

    .venv/bin/python benchmarks/bench_loss_memory.py                          # every shape, plain vs auto
    .venv/bin/python benchmarks/bench_loss_memory.py --shape d64 --chunk-mib 256 auto
    .venv/bin/python benchmarks/bench_loss_memory.py --quick                  # CI-sized (small vocabulary)

Shapes (issue #12): `reduced` = d 256, 2 layers, T 2048, B 2; `xglm-564M-2L` = xglm-564M's widths (d 1024,
ffn 4096, 16 heads) with 2 of its 24 layers; (issue #26) `d64` = the debug body (d 64, ffn 256, 4 heads,
2 layers), T 2048, B 1. Each (shape, loss) runs in its own fresh process, A B C A B C, so all columns see the
same machine. A step is forward + backward + AdamW; its peak is the process's resident
peak during the timed steps above what it held before them (weights, gradients and AdamW state, allocated
by a warm-up step), read from /proc (VmHWM after resetting it through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import functools, gc, json, sys, time
import torch
import torch.nn.functional as F
from xlbtm.models import build_model, get_preset
from xlbtm.models.loss import chunk_tokens, linear_cross_entropy, model_loss

loss_kind, d, ffn, heads, layers, V, T, B, steps = sys.argv[1], *map(int, sys.argv[2:10])
torch.manual_seed(0)
args = get_preset("debug", vocab_size=V, d_model=d, ffn_dim=ffn, n_heads=heads, n_layers=layers,
                  max_positions=T)
model = build_model(args)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randint(4, V, (B, T))
y = torch.roll(x, -1, dims=1)
mib = None if loss_kind in ("plain", "auto") else float(loss_kind)
loss_fn = functools.partial(linear_cross_entropy, chunk_mib=mib)

def step():
    if loss_kind == "plain":
        logits = model(x, None)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
    else:
        loss = model_loss(model, x, None, y, loss_fn=loss_fn)
    (loss / y.numel()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss) / y.numel()

def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

first = step()  # allocates the AdamW state
gc.collect()
base = rss_kib("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM: from here on it is the peak of the timed steps
t0 = time.perf_counter()
for _ in range(steps):
    step()
dt = time.perf_counter() - t0
print(json.dumps({"loss": loss_kind, "chunk_tokens": chunk_tokens(V, d, mib), "first_loss": first, "step_peak_mib": (rss_kib("VmHWM:") - base) / 1024,
                  "held_mib": base / 1024, "tokens_per_s": B * T * steps / dt}))
"""

SHAPES = {  # name: d, ffn, heads, layers, V, T, B
    "reduced": (256, 1024, 4, 2, 256008, 2048, 2),
    "xglm-564M-2L": (1024, 4096, 16, 2, 256008, 2048, 2),
    "d64": (64, 256, 4, 2, 256008, 2048, 1),
}
QUICK = {"quick": (64, 256, 4, 2, 32000, 256, 2)}


def run(loss: str, shape: tuple, steps: int, threads: int) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, loss, *map(str, shape), str(steps)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small shape (CI): checks the script, not the claim")
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES), help="only these shapes (repeatable)")
    ap.add_argument(
        "--chunk-mib",
        nargs="+",
        default=["auto"],
        help="chunk budgets to run beside the plain loss: MiB of fp32 logits per chunk, or auto",
    )
    ap.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=1, help="A B rounds per shape")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    for c in a.chunk_mib:
        if c != "auto":
            float(c)  # a number, or fail here rather than in the child
    shapes = QUICK if a.quick else {k: v for k, v in SHAPES.items() if not a.shape or k in a.shape}
    kinds = ["plain", *a.chunk_mib]
    for name, shape in shapes.items():
        res = {k: [] for k in kinds}
        for _ in range(a.repeats):
            for kind in kinds:
                res[kind].append(run(kind, shape, a.steps, a.threads))
        best = {k: min(v, key=lambda r: r["step_peak_mib"]) for k, v in res.items()}
        p = best["plain"]
        row = {
            "shape": name,
            "d": shape[0],
            "layers": shape[3],
            "V": shape[4],
            "T": shape[5],
            "B": shape[6],
            "plain_peak_mib": round(p["step_peak_mib"]),
            "plain_tokens_per_s": round(p["tokens_per_s"]),
            "chunked": [],
        }
        for kind in a.chunk_mib:
            c = best[kind]
            row["chunked"].append(
                {
                    "chunk_mib": kind,
                    "chunk_tokens": c["chunk_tokens"],
                    "peak_mib": round(c["step_peak_mib"]),
                    "peak_ratio": round(p["step_peak_mib"] / max(c["step_peak_mib"], 1), 2),
                    "tokens_per_s": round(c["tokens_per_s"]),
                    "speed_ratio": round(c["tokens_per_s"] / p["tokens_per_s"], 2),
                    "same_first_loss": abs(p["first_loss"] - c["first_loss"]) < 1e-4 * abs(p["first_loss"]),
                }
            )
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
