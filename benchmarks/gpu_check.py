"""The GPU check (issue #12): one prepared run, at most ~8 minutes on one GPU, one JSON line per figure.

    bash benchmarks/gpu_check.sh            # on the GPU machine: every figure
    bash benchmarks/gpu_check.sh --quick    # CI-sized: the CPU parts, GPU figures reported as not measured

Correctness (a tiny model trained on the built-in demo corpus, dense K=1):
  - train_bf16_vs_fp32: 50 steps in bf16 (FSDP2 mixed precision) on the GPU track the fp32 CPU run: the mean
    loss of the last 10 steps within 2%;
  - train_fsdp_compile_ac: the same GPU run with torch.compile + activation checkpointing, within 2% of eager;
  - eval_gpu_vs_cpu: eval_ensemble's perplexity of that expert on the GPU equals the CPU's within 1e-3.
Speed (random weights, synthetic tokens, T = 2048, bf16, FSDP2 + compile, AdamW):
  - speed_xglm-564M, speed_xglm-1.7B: tokens/s, MFU (6N + 12 L d T per token, the LM head included, against
    the device's dense bf16 peak), peak memory; activation checkpointing where it would not fit otherwise.
Every figure is measured in its own try block: a failure prints {"figure", "error"} and the rest still run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def emit(figure: str, **values) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def not_measured(figure: str) -> None:
    emit(figure, measured=False, reason="no CUDA device here: GPU figures were not measured")


def guarded(figure: str, fn, *args) -> dict | None:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- one figure's failure must not hide the others
        emit(figure, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-1500:])
        return None


# ------------------------------------------------------------------------------------------ correctness


def demo_data(root: Path, n_train: int) -> tuple[Path, Path]:
    """(corpus dir, binarized dense dir) of the built-in demo corpus with a small tokenizer."""
    from xlbtm.corpus import Corpus
    from xlbtm.data.binarize import binarize
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    data = root / "corpus"
    write_demo_corpus(data, n_train=n_train, n_valid=max(20, n_train // 10))
    train_sentencepiece([d.text for d in Corpus(data).iter_documents("train")], root / "tok", vocab_size=1000)
    binarize(data, root / "bin", load_tokenizer(root / "tok"), workers=0)
    return data, root / "bin"


def train(run_dir: Path, data_bin: Path, device: str, steps: int, **over) -> dict:
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.loop import train_expert
    from xlbtm.train.metrics import read_train_log

    cfg = TrainConfig(
        run_dir=str(run_dir),
        data_dir=str(data_bin),
        seed_model="debug",
        cluster=0,
        num_clusters=1,
        tokens_per_sample=128,
        batch_size=8,
        max_steps=steps,
        learning_rate=3e-3,
        warmup_updates=5,
        log_interval=1,
        validate_interval_updates=0,
        save_interval_updates=0,
        device=device,
        progress_bar=False,
        **over,
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines: stdout is for the JSON lines
        train_expert(cfg)
    rows = [r for r in read_train_log(run_dir) if r["kind"] == "train"]
    last = [r["loss"] for r in rows[-10:]]
    return {
        "steps": len(rows),
        "last10_loss": sum(last) / len(last),
        "seconds": round(time.perf_counter() - t0, 1),
        "tokens_per_s": rows[-1]["tokens_per_s"],
    }


def within(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(b)


def eval_ppl(data: Path, run_dir: Path, job_dir: Path, device: str) -> float:
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval

    with contextlib.redirect_stdout(sys.stderr):
        res = run_eval(
            EvalConfig(
                data_dir=str(data),
                data_subset="valid",
                job_dir=str(job_dir),
                ensemble_type="dense",
                model_paths=[str(run_dir)],
                device=device,
            )
        )
    return float(res["result_ppl"])


# ---------------------------------------------------------------------------------------------- speed


def speed(preset: str, batch: int, seq: int, steps: int, ac: bool) -> dict:
    """tokens/s, MFU and peak memory of FSDP2 + compile training steps on one GPU."""
    from xlbtm.launch.distributed import destroy_distributed, init_distributed
    from xlbtm.models import build_model, flops_per_token, get_preset
    from xlbtm.models.loss import model_loss
    from xlbtm.parallel.mesh import ParallelDims, build_mesh
    from xlbtm.parallel.parallelize import build_loss_fn, parallelize
    from xlbtm.train.metrics import peak_flops

    init_distributed(device="cuda", init_single=True)
    try:
        dev = torch.device("cuda")
        args = get_preset(preset, dropout=0.0, attention_dropout=0.0)
        with torch.device("meta"):
            model = build_model(args)
        model.to_empty(device=dev)
        model.init_weights()
        mesh = build_mesh(ParallelDims(1, 1), "cuda")
        parallelize(model, mesh, device_type="cuda", ac=ac, compile=True)
        loss_fn = build_loss_fn(mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randint(4, args.vocab_size, (batch, seq), device=dev)
        y = torch.roll(x, -1, dims=1)

        def step():
            loss = model_loss(model, x, None, y, loss_fn=loss_fn) / y.numel()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        for _ in range(3):  # compile + allocator warm-up
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tps = batch * seq * steps / dt
        peak = peak_flops(dev)
        fpt = flops_per_token(args, seq)
        return {
            "tokens_per_s": round(tps),
            "mfu": None if not peak else round(fpt * tps / peak, 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "batch": batch,
            "seq": seq,
            "tokens_per_step": batch * seq,
            "ac": ac,
            "steps": steps,
            "loss": float(loss),
            "device": torch.cuda.get_device_name(dev),
            "peak_bf16_flops": peak,
            "flops_per_token": fpt,
        }
    finally:
        destroy_distributed()
        torch.cuda.empty_cache()


def speed_figure(preset: str, batch: int, seq: int, steps: int) -> dict:
    """Without activation checkpointing when it fits, with it otherwise (the figure says which)."""
    try:
        out = speed(preset, batch, seq, steps, ac=False)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        out = speed(preset, batch, seq, steps, ac=True)
    emit(f"speed_{preset}", measured=True, **out)
    return out


# ----------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: fewer steps, CPU parts only")
    ap.add_argument("--out", default=None, help="working dir (default: a temp dir)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.quick
    root = Path(a.out or tempfile.mkdtemp(prefix="xlbtm-gpu-check-"))
    steps = 10 if a.quick else 50
    emit(
        "environment",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        quick=a.quick,
    )
    data, data_bin = demo_data(root, n_train=200 if a.quick else 800)

    cpu = guarded("train_fp32_cpu", train, root / "cpu", data_bin, "cpu", steps)
    if cpu:
        emit("train_fp32_cpu", measured=True, **cpu)
    ppl_cpu = guarded("eval_cpu", eval_ppl, data, root / "cpu", root / "eval_cpu", "cpu") if cpu else None
    if ppl_cpu is not None:
        emit("eval_cpu", measured=True, ppl=ppl_cpu)
    if not cuda:
        for f in (
            "train_bf16_vs_fp32",
            "train_fsdp_compile_ac",
            "eval_gpu_vs_cpu",
            "speed_xglm-564M",
            "speed_xglm-1.7B",
        ):
            not_measured(f)
        return 0

    gpu = guarded("train_bf16_vs_fp32", train, root / "gpu", data_bin, "cuda", steps)
    if gpu and cpu:
        emit(
            "train_bf16_vs_fp32",
            measured=True,
            gpu=gpu,
            cpu_last10_loss=cpu["last10_loss"],
            ok=within(gpu["last10_loss"], cpu["last10_loss"], 0.02),
        )
    fast = guarded(
        "train_fsdp_compile_ac",
        train,
        root / "gpu_compile_ac",
        data_bin,
        "cuda",
        steps,
        compile=True,
        activation_checkpointing=True,
    )
    if fast and gpu:
        emit(
            "train_fsdp_compile_ac",
            measured=True,
            run=fast,
            eager_last10_loss=gpu["last10_loss"],
            ok=within(fast["last10_loss"], gpu["last10_loss"], 0.02),
        )
    if ppl_cpu is not None:
        ppl_gpu = guarded("eval_gpu_vs_cpu", eval_ppl, data, root / "cpu", root / "eval_gpu", "cuda")
        if ppl_gpu is not None:
            emit(
                "eval_gpu_vs_cpu",
                measured=True,
                ppl_cpu=ppl_cpu,
                ppl_gpu=ppl_gpu,
                ok=abs(ppl_gpu - ppl_cpu) <= 1e-3 and math.isfinite(ppl_gpu),
            )
    guarded("speed_xglm-564M", speed_figure, "xglm-564M", 8, 2048, 10)  # B*T = 16k tokens
    guarded("speed_xglm-1.7B", speed_figure, "xglm-1.7B", 8, 2048, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
