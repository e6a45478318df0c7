"""Training throughput: tokens/s and MFU of the real xlbtm training step (parallelize -> fwd/bwd -> clip -> AdamW).

    .venv/bin/python benchmarks/bench_train.py                                  # CPU: small model, variants
    python benchmarks/bench_train.py --preset xglm-564M --seq-len 2048 --batch-size 8 --variants compile
    python benchmarks/bench_train.py --preset xglm-1.7B --seq-len 2048 --batch-size 4 --variants compile,ac+compile

Variants are measured side by side in one process: `eager`, `ac` (activation checkpointing), `compile`
(torch.compile per block), `ac+compile`. Every variant goes through `xlbtm.parallel.parallelize` with FSDP2
(bf16 params / fp32 reduce on GPU, fp32 on CPU) on a 1-process mesh, so the numbers include FSDP's hooks.
MFU = flops_per_token (6N + 12 L d T, LM head included) x tokens/s / peak (bf16 dense; null on CPU).
Prints a markdown table and one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def bench_variant(
    preset: str, overrides: dict, variant: str, seq_len: int, batch_size: int, steps: int, warmup: int
) -> dict:
    import torch
    import torch.nn.functional as F

    from xlbtm.launch.distributed import init_distributed
    from xlbtm.models import build_model, flops_per_token, get_preset, num_params
    from xlbtm.parallel.mesh import ParallelDims, build_mesh
    from xlbtm.parallel.parallelize import parallelize
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.metrics import peak_flops
    from xlbtm.train.optim import build_optimizer, clip_grad_norm

    info = init_distributed(init_single=True)
    device = torch.device(info.device)
    mesh = build_mesh(ParallelDims.from_world(info.world_size, 1), device.type)
    args = get_preset(preset, **overrides)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device=device)
    model.init_weights()
    n_params = num_params(model)
    parallelize(model, mesh, device_type=device.type, ac="ac" in variant, compile="compile" in variant)
    cfg = TrainConfig(run_dir="-", data_dir="-", seed_model=preset)
    opt = build_optimizer(model, cfg, device.type)
    x = torch.randint(4, args.vocab_size, (batch_size, seq_len + 1), device=device)

    def step():
        logits = model(x[:, :-1], None)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    tps = batch_size * seq_len * steps / dt
    peak = peak_flops(device)
    fpt = flops_per_token(args, seq_len)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "preset": preset,
        "overrides": overrides,
        "variant": variant,
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "params": n_params,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "steps": steps,
        "step_s": dt / steps,
        "tokens_per_s": tps,
        "tflops_per_s": fpt * tps / 1e12,
        "mfu": None if not peak else fpt * tps / peak,
        "warmup_s": warm_s,
        "max_mem_gib": mem,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="debug")
    p.add_argument("--d-model", type=int, default=256, help="override (CPU default: a small but non-trivial model)")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--no-overrides", action="store_true", help="use the preset as is (real model sizes)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default="eager,ac,compile")
    a = p.parse_args(argv)
    overrides = (
        {}
        if a.no_overrides or a.preset != "debug"
        else dict(
            d_model=a.d_model,
            n_layers=a.n_layers,
            n_heads=a.n_heads,
            ffn_dim=a.ffn_dim,
            vocab_size=a.vocab_size,
            max_positions=max(512, a.seq_len),
        )
    )
    rows = []
    for v in a.variants.split(","):
        r = bench_variant(a.preset, overrides, v.strip(), a.seq_len, a.batch_size, a.steps, a.warmup)
        rows.append(r)
        print(json.dumps(r), flush=True)
    base = rows[0]["tokens_per_s"]
    print(
        f"\n{rows[0]['params'] / 1e6:.1f}M params, {a.seq_len} tokens x batch {a.batch_size}, "
        f"{rows[0]['device']} ({rows[0]['device_name']})\n"
    )
    print("| variant | step s | tokens/s | TFLOP/s | MFU | vs first | warmup s | max mem GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = "n/a (CPU)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "" if r["max_mem_gib"] is None else f"{r['max_mem_gib']:.1f}"
        print(
            f"| {r['variant']} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['tflops_per_s']:.3f} | {mfu} | "
            f"{r['tokens_per_s'] / base:.2f}x | {r['warmup_s']:.1f} | {mem} |"
        )


if __name__ == "__main__":
    main()
