"""Training-step throughput of xlbtm's XGLM vs transformers' XGLMForCausalLM, same config, same run.

A step = forward, next-token cross-entropy (computed the same way for both), backward, AdamW step.
The two models are timed in alternating rounds (after warm-up) so machine noise hits both alike.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_model.py            # CPU, prints a markdown table
    .venv/bin/python benchmarks/bench_model.py --gpu                        # bf16 fwd/bwd of xglm-564M on CUDA

Throughput is tokens/s (batch x seq_len / median step time). The CPU model is small (d=256, 4 layers,
V=8000) so a step takes seconds; the difference comes from attention: SDPA's fused causal kernel skips
the masked half of the T x T scores and never materialises them, transformers' eager XGLM attention
does both, so the gap grows with the context length.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _step_fn(model, opt, hf: bool):
    def step(x, y):
        logits = model(input_ids=x).logits if hf else model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build_pair(args, device="cpu", dtype=torch.float32):
    from transformers import XGLMForCausalLM

    from xlbtm.models import build_model
    from xlbtm.models.adapters import hf_config, xlbtm_to_hf

    torch.manual_seed(0)
    ours = build_model(args).to(device=device, dtype=dtype).train()
    cfg = hf_config(args)
    cfg._attn_implementation = "eager"  # XGLM in transformers has a single (eager) attention path
    hf = XGLMForCausalLM(cfg).to(device=device, dtype=dtype).train()
    hf.load_state_dict(xlbtm_to_hf(ours.state_dict(), args, include_tied=True), strict=False)
    return ours, hf


def bench_cpu(args, batch, seq_len, rounds, iters, warmup):
    ours, hf = build_pair(args)
    steps = {
        "xlbtm": _step_fn(ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), hf=False),
        "transformers": _step_fn(hf, torch.optim.AdamW(hf.parameters(), lr=1e-4), hf=True),
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, args.vocab_size, (batch, seq_len), generator=g)
    y = torch.randint(3, args.vocab_size, (batch, seq_len), generator=g)
    for fn in steps.values():
        for _ in range(warmup):
            fn(x, y)
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(x, y)
            times[name].append((time.perf_counter() - t0) / iters)
    tok = batch * seq_len
    return {k: tok / statistics.median(v) for k, v in times.items()}


def bench_gpu(preset, batch, seq_len, iters, warmup):
    from xlbtm.models import get_preset

    args = get_preset(preset, dropout=0.0, attention_dropout=0.0)
    ours, hf = build_pair(args, device="cuda", dtype=torch.bfloat16)
    out = {}
    x = torch.randint(3, args.vocab_size, (batch, seq_len), device="cuda")
    y = torch.randint(3, args.vocab_size, (batch, seq_len), device="cuda")
    for name, model, is_hf in (("xlbtm", ours, False), ("transformers", hf, True)):

        def fb(model=model, is_hf=is_hf):
            logits = model(input_ids=x).logits if is_hf else model(x)
            F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1)).backward()
            model.zero_grad(set_to_none=True)

        for _ in range(warmup):
            fb()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            fb()
        torch.cuda.synchronize()
        out[name] = batch * seq_len * iters / (time.perf_counter() - t0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens-per-step", type=int, default=2048, help="CPU: batch = tokens-per-step / seq_len")
    p.add_argument("--batch", type=int, default=8, help="GPU batch")
    p.add_argument("--seq-len", type=int, default=2048, help="GPU sequence length")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="bf16 forward/backward of --gpu-preset on CUDA instead")
    p.add_argument("--gpu-preset", default="xglm-564M")
    a = p.parse_args(argv)

    if a.gpu:
        r = bench_gpu(a.gpu_preset, a.batch, a.seq_len, iters=10, warmup=3)
        print(
            f"| {a.gpu_preset} bf16 fwd+bwd, batch {a.batch} x {a.seq_len} | {r['xlbtm']:,.0f} | "
            f"{r['transformers']:,.0f} | {r['xlbtm'] / r['transformers']:.2f}x |"
        )
        return
    from xlbtm.models import ModelArgs

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| seq_len x batch | dropout / attention dropout | xlbtm tok/s | transformers tok/s | xlbtm speed-up |")
    print("|---|---|---:|---:|---:|")
    tokens = a.tokens_per_step
    # (seq_len, residual dropout, attention dropout): c-BTM/OPT-style dropout at growing context, then
    # XGLM's published config (attention dropout on CPU forces SDPA's unfused math path)
    for seq_len, drop, attn_drop in ((512, 0.1, 0.0), (1024, 0.1, 0.0), (2048, 0.1, 0.0), (2048, 0.1, 0.1)):
        batch = max(1, tokens // seq_len)
        args = ModelArgs(
            arch="xglm",
            vocab_size=a.vocab,
            d_model=a.d_model,
            n_layers=a.layers,
            n_heads=a.heads,
            ffn_dim=4 * a.d_model,
            max_positions=seq_len,
            dropout=drop,
            attention_dropout=attn_drop,
            activation_dropout=0.0,
        )
        r = bench_cpu(args, batch, seq_len, a.rounds, a.iters, a.warmup)
        print(
            f"| {seq_len} x {batch} | {drop} / {attn_drop} | {r['xlbtm']:,.0f} | {r['transformers']:,.0f} | "
            f"{r['xlbtm'] / r['transformers']:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
