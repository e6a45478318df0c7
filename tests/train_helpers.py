"""Helpers for the training tests: a tiny tokenizer + binarized demo corpus, multi-process launches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys
from xlbtm.cli import setup_logging
setup_logging("train")
from xlbtm.train.config import TrainConfig
from xlbtm.train.loop import train_expert
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
r = train_expert(cfg)
print("RESULT", json.dumps({"status": r.status, "step": r.step, "valid_loss": r.valid_loss}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_demo_data(root: Path, *, n_train: int = 120, n_valid: int = 24, clusters: int = 2):
    """Demo corpus, tokenizer, cluster files (cluster = line index % K) under `root`; returns paths."""
    from xlbtm.corpus import Corpus
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.formats.clusters import cluster_file_path, write_cluster_file, write_manifest
    from xlbtm.tokenizer import train_sentencepiece

    data = root / "corpus"
    write_demo_corpus(data, n_train=n_train, n_valid=n_valid)
    corpus = Corpus(data)
    tok = root / "tok"
    train_sentencepiece([d.text for d in corpus.iter_documents("train")], tok, vocab_size=300)
    cdir = root / "clusters"
    for split in ("train", "valid"):
        for f in corpus.files(split):
            write_cluster_file(
                cluster_file_path(cdir, corpus.rel(f)),
                ((d.sp_id, int(d.sp_id.rsplit("|", 1)[1]) % clusters) for d in corpus.iter_file(f)),
            )
    write_manifest(
        cdir, {"format": "xlbtm-clusters/1", "fingerprint": "test-fp", "num_clusters": clusters, "kind": "test"}
    )
    return data, tok, cdir


def base_cfg(run_dir, data_bin, **over) -> dict:
    from xlbtm.train.config import TrainConfig

    cfg = TrainConfig(
        run_dir=str(run_dir),
        data_dir=str(data_bin),
        seed_model="debug",
        cluster=0,
        num_clusters=2,
        tokens_per_sample=32,
        batch_size=4,
        max_steps=4,
        learning_rate=3e-3,
        warmup_updates=1,
        log_interval=1,
        validate_interval_updates=0,
        save_interval_updates=0,
        clip_norm=0.5,
        max_valid_samples=16,
        progress_bar=False,
        device="cpu",
    )
    d = cfg.to_dict()
    d.update(over)
    return d


def launch(nprocs: int, cfg: dict, *, timeout: float = 240, wait: bool = True):
    """Run train_expert in `nprocs` processes (torchrun-style env, gloo). Returns (rcs, outputs) or the Popens."""
    port = free_port()
    procs = []
    for r in range(nprocs):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(nprocs),
            LOCAL_WORLD_SIZE=str(nprocs),
            OMP_NUM_THREADS="1",
        )
        for k in ("SUBMITIT_EXECUTOR", "SLURM_JOB_ID"):
            env.pop(k, None)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(cfg)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    if not wait:
        return procs
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    rcs = [p.returncode for p in procs]
    assert all(rc == 0 for rc in rcs), "\n".join(o[-3000:] for o in outs)
    return rcs, outs


def result_of(out: str) -> dict:
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def train_losses(run_dir) -> dict[int, float]:
    from xlbtm.train.metrics import read_train_log

    return {r["step"]: r["loss"] for r in read_train_log(run_dir) if r["kind"] == "train"}


def train_gnorms(run_dir) -> dict[int, float]:
    """The logged gradient norm (before clipping) of every step."""
    from xlbtm.train.metrics import read_train_log

    return {r["step"]: r["gnorm"] for r in read_train_log(run_dir) if r["kind"] == "train"}


def final_weights(run_dir):
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.parallel.checkpoint import read_model_state

    return read_model_state(latest_checkpoint(run_dir))
