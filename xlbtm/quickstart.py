"""The whole pipeline on one machine, as a user would type it, stage by stage.

Each stage calls the same `python -m xlbtm.scripts.<name>` entry point a user runs (in this process, with
the argv shown in the log), so the quickstart is also a living example of the command lines:

  demo corpus -> tokenizer -> dense seed -> clusterer (K) -> assign train/valid -> K experts + a
  compute-matched dense continuation -> consolidate -> HF export -> evaluate ensemble vs dense -> report.

Stages whose outputs already exist are resumed by the stages themselves (training resumes from `latest`,
assignment skips finished files), so rerunning after a crash continues instead of starting over.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from xlbtm.cli import get_logger
from xlbtm.errors import UsageError

log = get_logger("quickstart")


@dataclass
class QuickstartConfig:
    out: str = "quickstart_out"
    data_dir: str | None = None      # None = generate the demo corpus
    num_clusters: int = 4
    num_train_docs: int = 2000       # demo corpus size
    num_valid_docs: int = 200
    vocab_size: int = 2000
    tokens_per_sample: int = 128
    batch_size: int = 8
    seed_steps: int = 400            # dense seed pre-training
    expert_steps: int = 200          # per expert; the dense continuation gets K x this (compute-matched)
    learning_rate: float = 5e-3
    max_valid_docs: int | None = None
    seed: int = 0


def _run(stage: str, main: Callable[[Sequence[str] | None], int | None], argv: list[str]) -> None:
    from xlbtm.cli import setup_logging

    log.info("$ python -m xlbtm.scripts.%s %s", stage, shlex.join(argv))
    setup_logging(stage)  # the stage's own lines carry its name, as when a user runs it
    try:
        rc = main(argv)
    finally:
        setup_logging("quickstart")
    if rc:
        raise RuntimeError(f"stage {stage} exited with status {rc}")


def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Run every stage; returns the headline numbers and where the report is."""
    from xlbtm.scripts import cluster, consolidate, eval_ensemble, train_clusterer, train_experts
    from xlbtm.tokenizer import train_tokenizer_from_corpus

    if cfg.num_clusters < 2:
        raise UsageError("--num-clusters must be >= 2 for an ensemble (the dense model is trained anyway)")
    t0 = time.time()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    K = cfg.num_clusters
    stages = 9

    def stage(i: int, what: str) -> None:
        log.info("[%d/%d] %s  (%.0f s elapsed)", i, stages, what, time.time() - t0)

    # 1. data
    if cfg.data_dir is None:
        from xlbtm.demo_corpus import write_demo_corpus

        data = out / "data"
        stage(1, f"demo corpus: {cfg.num_train_docs} train / {cfg.num_valid_docs} valid documents -> {data}")
        if not (data / "demo_corpus.json").is_file():
            summary = write_demo_corpus(data, n_train=cfg.num_train_docs, n_valid=cfg.num_valid_docs, seed=cfg.seed)
            log.info("languages: %s", ", ".join(summary["languages"]))
    else:
        data = Path(cfg.data_dir).resolve()
        stage(1, f"corpus: {data}")

    # 2. tokenizer
    tok = out / "tokenizer"
    stage(2, f"SentencePiece tokenizer ({cfg.vocab_size} pieces) -> {tok}")
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer_from_corpus(data, tok, vocab_size=cfg.vocab_size, seed=cfg.seed, style="xglm")

    common = ["--path-to-data", str(data), "--tokenizer", str(tok), "--run", "local", "--num-gpus", "1",
              "--tokens-per-sample", str(cfg.tokens_per_sample), "--batch-size", str(cfg.batch_size),
              "--learning-rate", str(cfg.learning_rate), "--seed", str(cfg.seed + 1),
              "--max-valid-samples", "256"]  # a progress signal, not the evaluation (that is stage 8)

    # 3. dense seed: a tiny XGLM trained from scratch on all data (stands in for a public XGLM checkpoint)
    seed_dir = out / "seed"
    stage(3, f"dense seed: tiny XGLM, {cfg.seed_steps} steps -> {seed_dir}")
    _run("train_experts", train_experts.main, common + [
        "--seed-model", "debug", "--num-clusters", "1", "--serialization-dir", str(seed_dir),
        "--run-name", "seed", "--max-steps", str(cfg.seed_steps), "--warmup-updates", str(cfg.seed_steps // 10),
        "--save-interval-updates", str(cfg.seed_steps), "--validate-interval-updates", str(cfg.seed_steps)])
    seed_run = seed_dir / "1_clusters" / "seed.cluster0"
    _run("consolidate", consolidate.main, [str(seed_run)])
    seed_ckpt = seed_run / "consolidated.pt"

    # 4. clusterer
    clusterer = out / "clusterer"
    stage(4, f"clusterer: subword TF-IDF + balanced k-means, K={K} -> {clusterer}")
    _run("train_clusterer", train_clusterer.main, [
        "--data-dir", str(data / "train"), "--num-clusters", str(K), "--balanced", "--featurizer", "subword",
        "--tokenizer", str(tok), "--output-dir", str(clusterer), "--seed", str(cfg.seed)])

    # 5. assignment
    clusters = out / "clusters"
    stage(5, f"assign train and valid documents to clusters -> {clusters}")
    for split in ("train", "valid"):
        _run("cluster", cluster.main, [
            "--data-dir", str(data), "--path-to-clusterer", str(clusterer), "--num-clusters", str(K),
            "--output-prefix", str(clusters), "--split", split, "--run", "local"])

    # 6. experts + compute-matched dense continuation (both branch from the seed; train_experts binarizes
    #    each cluster's documents first, once)
    models = out / "models"
    interval = str(max(cfg.expert_steps // 2, 1))
    stage(6, f"{K} experts x {cfg.expert_steps} steps, dense x {K * cfg.expert_steps} steps -> {models}")
    _run("train_experts", train_experts.main, common + [
        "--seed-model", str(seed_ckpt), "--num-clusters", str(K), "--path-to-clusters-dir", str(clusters),
        "--serialization-dir", str(models), "--run-name", "demo", "--max-steps", str(cfg.expert_steps),
        "--save-interval-updates", interval, "--validate-interval-updates", interval])
    dense_steps = K * cfg.expert_steps
    _run("train_experts", train_experts.main, common + [
        "--seed-model", str(seed_ckpt), "--num-clusters", "1", "--serialization-dir", str(models),
        "--run-name", "dense", "--max-steps", str(dense_steps),
        "--save-interval-updates", str(dense_steps // 2), "--validate-interval-updates", str(dense_steps // 2)])

    # 7. consolidate (+ one HF export)
    expert_dirs = sorted((models / f"{K}_clusters").glob("demo.cluster*"))
    dense_run = models / "1_clusters" / "dense.cluster0"
    stage(7, f"consolidate {len(expert_dirs)} experts and the dense model; HF export of expert 0")
    for d in expert_dirs:
        _run("consolidate", consolidate.main, [str(d)] + (["--hf"] if d.name.endswith("cluster0") else []))
    _run("consolidate", consolidate.main, [str(dense_run)])

    # 8. evaluate
    eval_dir = out / "eval"
    stage(8, f"evaluate the ensemble (clustering routing) and the dense model -> {eval_dir}")
    limit = ["--max-valid-steps", str(cfg.max_valid_docs)] if cfg.max_valid_docs else []
    _run("eval_ensemble", eval_ensemble.main, [
        "--data-dir", str(data), "--data-subset", "valid", "--model-paths", str(dense_run),
        "--ensemble-type", "dense", "--job-dir", str(eval_dir / "dense")] + limit)
    _run("eval_ensemble", eval_ensemble.main, [
        "--data-dir", str(data), "--data-subset", "valid", "--path-to-clusterer", str(clusterer),
        "--experts-dir", str(models / f"{K}_clusters"), "--ensemble-type", "clustering",
        "--temperature", "0.1", "--topk", "-1", "--job-dir", str(eval_dir / "ensemble"),
        "--dense-result", str(eval_dir / "dense" / "result.json")] + limit)

    # 9. headline
    stage(9, "report")
    ens = json.loads((eval_dir / "ensemble" / "result.json").read_text())
    dense = json.loads((eval_dir / "dense" / "result.json").read_text())
    summary = {
        "report": str(eval_dir / "ensemble" / "report.md"),
        "ensemble_ppl": ens["result_ppl"],
        "dense_ppl": dense["result_ppl"],
        "num_clusters": K,
        "seconds": round(time.time() - t0, 1),
        "out": str(out),
    }
    log.info("done in %.0f s. ensemble ppl %.2f vs dense %.2f (K=%d, compute-matched). report: %s",
             summary["seconds"], summary["ensemble_ppl"], summary["dense_ppl"], K, summary["report"])
    return summary
