"""Per-step overhead of xlbtm's training loop against a bare PyTorch loop, on the quickstart's model.

    .venv/bin/python benchmarks/bench_step_overhead.py                       # this tree only
    git worktree add /tmp/xlbtm-before <commit>
    .venv/bin/python benchmarks/bench_step_overhead.py --before /tmp/xlbtm-before   # + the older loop

`bare` is the loop a researcher would write by hand: the same plain `nn.Module` (debug preset, the quickstart's
2,000-piece vocabulary), batch 8 x 128 tokens drawn from the same binarized demo corpus, AdamW, fp32
cross-entropy, `torch.nn.utils.clip_grad_norm_`; no process group, no FSDP, no DTensor. `xlbtm` is the real
`train_expert` (process group, mesh, parallelize, sampler, per-step seeds, schedule, preemption check,
logging): its steps are timed by the loop's own tokens/s (training steps only; validation and saving are
off). Each configuration runs in its own fresh process, interleaved A B A B ..., and the median of the
repeats is reported, so machine noise hits every column alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
mode, root, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
B, T = 8, 128
if mode == "bare":
    import torch.nn.functional as F
    from xlbtm.data.binarize import bin_path
    from xlbtm.models import build_model, get_preset
    from xlbtm.tokenizer import load_tokenizer
    tok = load_tokenizer(str(root / "tok"))
    tokens = np.memmap(bin_path(root / "bin", "train", 0), dtype=np.uint32, mode="r")
    n = (len(tokens) - 1) // T
    perm = np.random.default_rng(1).permutation(n)
    torch.manual_seed(1)
    model = build_model(get_preset("debug", vocab_size=tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1,
                            foreach=True)
    def batch(s):
        idx = perm[(s * B + np.arange(B)) % n]
        block = np.stack([np.asarray(tokens[i * T:i * T + T + 1], dtype=np.int64) for i in idx])
        return torch.from_numpy(block[:, :-1]), torch.from_numpy(block[:, 1:])
    def step(s):
        x, y = batch(s)
        logits = model(x, None)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    warm = 20
    for s in range(warm):
        step(s)
    t0 = time.perf_counter()
    for s in range(warm, warm + steps):
        loss = step(s)
    float(loss)
    dt = time.perf_counter() - t0
    print("RESULT", json.dumps({"tokens_per_s": B * T * steps / dt}))
else:
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.loop import train_expert
    from xlbtm.train.metrics import read_train_log
    run = root / f"run-{mode}"
    shutil.rmtree(run, ignore_errors=True)
    log_every = 20
    cfg = TrainConfig(run_dir=str(run), data_dir=str(root / "bin"), seed_model="debug",
                      tokenizer=str(root / "tok"), tokens_per_sample=T, batch_size=B, max_steps=steps + log_every,
                      learning_rate=5e-3, log_interval=log_every, validate_interval_updates=0,
                      save_interval_updates=0, progress_bar=False, device="cpu")
    train_expert(cfg)
    tps = [r["tokens_per_s"] for r in read_train_log(run) if r["kind"] == "train"][1:]  # first = warm-up
    print("RESULT", json.dumps({"tokens_per_s": len(tps) / sum(1 / t for t in tps)}))
"""


def prepare(root: Path) -> None:
    """Demo corpus (the quickstart's: 2,000 train docs), its 2,000-piece tokenizer, one binarized cluster."""
    if (root / "bin").exists():
        return
    from xlbtm.data.binarize import binarize
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.tokenizer import load_tokenizer, train_tokenizer_from_corpus

    write_demo_corpus(root / "data", n_train=2000, n_valid=50, seed=0)
    train_tokenizer_from_corpus(root / "data", root / "tok", vocab_size=2000, seed=0, style="xglm")
    binarize(root / "data", root / "bin", load_tokenizer(str(root / "tok")), clusters_dir=None, workers=0)


def run_child(mode: str, src: Path, root: Path, steps: int, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), XLBTM_LOG_LEVEL="WARNING", OMP_NUM_THREADS=str(threads))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SUBMITIT_EXECUTOR"):
        env.pop(k, None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(root), str(steps), str(threads)],
        env=env,
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])["tokens_per_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default=None, help="a checkout of an older xlbtm to measure side by side")
    p.add_argument("--steps", type=int, default=200, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the quickstart uses all cores)")
    p.add_argument("--work-dir", default=None)
    a = p.parse_args(argv)
    root = Path(a.work_dir or tempfile.mkdtemp(prefix="xlbtm-bench-step-"))
    prepare(root)
    configs = [("bare", "bare", REPO), ("xlbtm", "xlbtm", REPO)]
    if a.before:
        configs.append(("xlbtm (before)", "before", Path(a.before).resolve()))
    got: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for _ in range(a.repeats):
        for name, mode, src in configs:
            got[name].append(run_child(mode, src, root, a.steps, a.threads))
    rows = {name: statistics.median(v) for name, v in got.items()}
    print(json.dumps({"tokens_per_s": rows, "runs": got}))
    print("\n| loop | tokens/s (median) | ms/step | step time vs bare |")
    print("|---|---:|---:|---:|")
    for name, tps in rows.items():
        print(f"| {name} | {tps:,.0f} | {8 * 128 / tps * 1000:.1f} | {rows['bare'] / tps:.2f}x |")


if __name__ == "__main__":
    main()
