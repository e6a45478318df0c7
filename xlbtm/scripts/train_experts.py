"""Train one expert per cluster (c-BTM `train_cbtm` / X-ELM): branch from a seed, FSDP2 + TP, resumable.

    python -m xlbtm.scripts.train_experts --run slurm --seed-model /ckpt/xglm-564M --model-size xglm-564M \\
        --path-to-clusters-dir clusters/c4 --num-clusters 8 --num-nodes 1 --num-gpus 8 \\
        --data-name c4 --path-to-data data --learning-rate 2e-4 --max-steps 10000 --batch-size 8 \\
        --update-freq 1 --tokens-per-sample 2048 --serialization-dir runs --objective clm

One submitit job per expert (a job array), N x G tasks each. Without GPUs, `--num-gpus G` runs G CPU worker
processes (gloo), so the same command works on a laptop. Rerunning the same command resumes every expert
from its `checkpoints/latest`. `--num-clusters 1` (no clusters dir) trains the dense baseline.
"""

from __future__ import annotations

import os
from pathlib import Path

from xlbtm.cli import get_logger, make_parser, run_script
from xlbtm.errors import UsageError

log = get_logger("train_experts")


def build_parser():
    from xlbtm.launch.site import add_slurm_args

    p = make_parser("train_experts", __doc__.split("\n\n")[0])
    g = p.add_argument_group("what to train")
    g.add_argument("--run", choices=["slurm", "local", "debug"], required=True,
                   help="slurm: one job per expert; local: the same jobs as local processes; debug: in this process")
    g.add_argument("--seed-model", required=True,
                   help="HF dir, metaseq/fairseq .pt, xlbtm consolidated.pt, or a preset name for a random init "
                        "(e.g. debug)")
    g.add_argument("--model-size", default=None, help="preset naming the architecture when the seed does not")
    g.add_argument("--tokenizer", default=None,
                   help="HF tokenizer dir (default: the seed's own; required with a preset seed)")
    g.add_argument("--objective", choices=["clm", "mlm"], default=None,
                   help="clm (XGLM) or mlm (XLM-R); default from the seed's architecture")
    g.add_argument("--path-to-clusters-dir", default=None, help="cluster files + manifest.json (not for K=1)")
    g.add_argument("--num-clusters", type=int, required=True, help="K; 1 = dense baseline (no filtering)")
    g.add_argument("--train-cluster", default=None, help="only these clusters, e.g. 1,3,5 (default: all)")
    g.add_argument("--data-name", default=None, help="dataset name (corpus at <path-to-data>/<data-name> if present)")
    g.add_argument("--path-to-data", required=True, help="jsonl corpus root (train/<shard>/*.jsonl, valid/...)")
    g.add_argument("--train-subset", default="train")
    g.add_argument("--valid-subset", default="valid")
    g.add_argument("--serialization-dir", required=True,
                   help="experts go to <serialization-dir>/<K>_clusters/<run-name>.cluster<i>/")
    g.add_argument("--run-name", default=None, help="default: --data-name or 'run'")
    g.add_argument("--binarized-dir", default=None,
                   help="binarized data (default <serialization-dir>/<K>_clusters/data-bin/<data-name>.<tok hash>)")
    g.add_argument("--binarize-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="tokenizer processes; with --run slurm binarization is one job with this many CPUs (+1)")
    g.add_argument("--allow-unassigned", action="store_true",
                   help="drop documents without a cluster instead of stopping with an error")

    g = p.add_argument_group("resources")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--num-gpus", type=int, default=1, help="GPUs (tasks) per node; CPU workers without GPUs")
    g.add_argument("--tensor-parallel-size", "--model-parallel", dest="tensor_parallel_size", type=int, default=1,
                   help="tensor-parallel degree (divides nodes x gpus); the rest is FSDP data parallel")
    g.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="auto: cuda when GPUs are visible locally / offered by SLURM partitions")
    g.add_argument("--dry-run", action="store_true", help="print the plan and the resources, submit nothing")
    g.add_argument("--no-wait", action="store_true", help="submit and return (slurm); default waits for the jobs")

    g = p.add_argument_group("optimization")
    g.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=2e-4)
    g.add_argument("--end-learning-rate", type=float, default=0.0)
    g.add_argument("--warmup-updates", type=int, default=0)
    g.add_argument("--max-steps", "--max-update", dest="max_steps", type=int, required=True)
    g.add_argument("--batch-size", type=int, default=8, help="samples per GPU (data-parallel rank) per micro-step")
    g.add_argument("--update-freq", type=int, default=1, help="gradient accumulation micro-steps")
    g.add_argument("--tokens-per-sample", type=int, default=2048)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip-norm", type=float, default=1.0)
    g.add_argument("--dropout", type=float, default=None, help="override the seed's dropout")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--activation-checkpointing", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile each block")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--save-interval-updates", type=int, default=1000)
    g.add_argument("--validate-interval-updates", type=int, default=1000)
    g.add_argument("--max-valid-samples", type=int, default=None)
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--tensorboard", action="store_true")
    add_slurm_args(p)
    return p


def main(argv=None):
    from xlbtm.train.experts import (ExpertPlan, LaunchSpec, binarized_dir_for, detect_device, ensure_binarized,
                                     experts_root, local_slots, parse_cluster_list, resolve_clusters_dir,
                                     resolve_data_dir, submit)

    args = build_parser().parse_args(argv)
    K = args.num_clusters
    if K < 1:
        raise UsageError("--num-clusters must be >= 1")
    if args.num_nodes < 1 or args.num_gpus < 1:
        raise UsageError("--num-nodes and --num-gpus must be >= 1")
    world = args.num_nodes * args.num_gpus
    if world % args.tensor_parallel_size:
        raise UsageError(f"--tensor-parallel-size {args.tensor_parallel_size} must divide --num-nodes x --num-gpus "
                         f"({world})")
    clusters = parse_cluster_list(args.train_cluster, K)
    data_dir = resolve_data_dir(args.path_to_data, args.data_name)
    clusters_dir, clusterer_fp = None, None
    if K > 1 or args.path_to_clusters_dir:
        if not args.path_to_clusters_dir:
            raise UsageError("--num-clusters > 1 needs --path-to-clusters-dir")
        if K > 1:
            from xlbtm.cluster.files import read_manifest

            clusters_dir = resolve_clusters_dir(args.path_to_clusters_dir, K, args.data_name)
            man = read_manifest(clusters_dir)
            if int(man["num_clusters"]) != K:
                raise UsageError(f"--num-clusters {K} but {clusters_dir}/manifest.json has {man['num_clusters']}")
            clusterer_fp = man["fingerprint"]

    tok_path = _resolve_tokenizer(args)
    from xlbtm.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_path)
    objective = args.objective or _default_objective(args)
    run_name = args.run_name or args.data_name or "run"
    bin_dir = Path(args.binarized_dir) if args.binarized_dir else binarized_dir_for(
        args.serialization_dir, K, args.data_name, tok.fingerprint)
    device = detect_device(args.run, args.device)
    from xlbtm.launch.site import site_from_args

    site = site_from_args(args)
    spec = LaunchSpec(run=args.run, num_nodes=args.num_nodes, num_gpus=args.num_gpus, device=device)

    plans = []
    for k in clusters:
        run_dir = experts_root(args.serialization_dir, K) / f"{run_name}.cluster{k}"
        from xlbtm.train.config import TrainConfig

        cfg = TrainConfig(
            run_dir=str(run_dir.resolve()), data_dir=str(bin_dir.resolve()), seed_model=args.seed_model,
            cluster=k, num_clusters=K, clusterer_fingerprint=clusterer_fp, run_name=run_name,
            model_size=args.model_size, tokenizer=str(Path(tok.path).resolve()), objective=objective,
            train_subset=args.train_subset, valid_subset=args.valid_subset,
            tokens_per_sample=args.tokens_per_sample, batch_size=args.batch_size, update_freq=args.update_freq,
            max_steps=args.max_steps, learning_rate=args.learning_rate, end_learning_rate=args.end_learning_rate,
            warmup_updates=args.warmup_updates, weight_decay=args.weight_decay, clip_norm=args.clip_norm,
            tensor_parallel_size=args.tensor_parallel_size,
            activation_checkpointing=args.activation_checkpointing, compile=args.compile,
            save_interval_updates=args.save_interval_updates,
            validate_interval_updates=args.validate_interval_updates, max_valid_samples=args.max_valid_samples,
            keep_checkpoints=args.keep_checkpoints, log_interval=args.log_interval, seed=args.seed,
            tensorboard=args.tensorboard, dropout=args.dropout, device=device, progress_bar=False)
        plans.append(ExpertPlan(k, run_dir, cfg))

    dp = world // args.tensor_parallel_size
    gbs = args.batch_size * dp * args.update_freq
    print(f"plan: {len(plans)} expert(s) of K={K} ({objective}, seed {args.seed_model}), clusters {clusters}")
    print(f"  data: {data_dir}  clusters: {clusters_dir or '(dense baseline: no filtering)'}")
    print(f"  binarized: {bin_dir}  tokenizer: {tok.path}")
    print(f"  per expert: {args.num_nodes} node(s) x {args.num_gpus} {'GPU' if device == 'cuda' else 'CPU worker'}(s) "
          f"= {world} tasks, dp={dp} tp={args.tensor_parallel_size}; {gbs} samples x {args.tokens_per_sample} "
          f"tokens per step = {gbs * args.tokens_per_sample} tokens/step, {args.max_steps} steps")
    print(f"  launch: --run {args.run}, device {device}; site: {site.describe()}")
    if args.run == "local":
        slots = local_slots(spec)
        print(f"  local: {len(slots)} expert(s) at a time"
              + (f" on GPUs {', '.join(map(str, slots))}" if slots[0] is not None else f" ({os.cpu_count()} CPU cores)"))
    from xlbtm.parallel.checkpoint import latest_checkpoint

    for p in plans:
        ck = latest_checkpoint(p.run_dir) if p.run_dir.exists() else None
        print(f"  cluster {p.cluster}: {p.run_dir}" + (f" (resumes from {ck.name})" if ck else ""))
    if args.dry_run:
        print("dry run: nothing binarized or submitted")
        return 0

    splits = [args.train_subset] + ([args.valid_subset] if args.valid_subset else [])
    ensure_binarized(data_dir, bin_dir, tok, clusters_dir, K, splits, args.binarize_workers, args.allow_unassigned,
                     clusterer_fp=clusterer_fp, run=args.run, site=site,
                     job_dir=experts_root(args.serialization_dir, K) / "logs")
    from xlbtm.launch.wait import wait_for

    def status(ps, js):
        for p, j in zip(ps, js):
            print(f"cluster {p.cluster}: job {j.job_id}; logs {j.paths.stdout} / {j.paths.stderr}; "
                  f"metrics {p.run_dir / 'train_log.jsonl'}", flush=True)

    if args.run == "local":
        # waves: never more concurrent experts than GPU sets (or CPU cores / G) on this machine
        slots = local_slots(spec)
        results = []
        for i in range(0, len(plans), len(slots)):
            wave = plans[i:i + len(slots)]
            jobs = submit(wave, spec, site, visible_gpus=slots[:len(wave)])
            status(wave, jobs)
            results += wait_for(jobs, what="train_experts")
    else:
        jobs = submit(plans, spec, site)
        status(plans, jobs)
        if args.no_wait and args.run == "slurm":
            print("submitted; rerun the same command to resume after a failure")
            return 0
        results = wait_for(jobs, what="train_experts")
    for p, r in zip(plans, results):
        vl = r.get("valid_loss") if isinstance(r, dict) else None
        print(f"cluster {p.cluster}: {r.get('status')} at step {r.get('step')}"
              + (f", valid loss {vl:.3f} (base 2)" if vl is not None else "") + f" -> {p.run_dir}")
    return 0 if all(isinstance(r, dict) and r.get("status") == "completed" for r in results) else 3


def _resolve_tokenizer(args) -> str:
    if args.tokenizer:
        return args.tokenizer
    seed = Path(args.seed_model)
    for cand in ([seed] if seed.is_dir() else []) + ([seed.parent] if seed.is_file() else []):
        if any((cand / f).is_file() for f in ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json")):
            return str(cand)
    raise UsageError("--tokenizer is required: the seed model does not carry a tokenizer "
                     f"({args.seed_model})")


def _default_objective(args) -> str:
    from xlbtm.models import PRESETS

    for name in (args.seed_model, args.model_size):
        if name in PRESETS:
            return "mlm" if PRESETS[name]["arch"] == "xlmr" else "clm"
    cfg = Path(args.seed_model) / "config.json"
    if cfg.is_file():
        from xlbtm.io import read_json

        return "mlm" if "roberta" in str(read_json(cfg).get("model_type", "")) else "clm"
    return "clm"


if __name__ == "__main__":
    run_script("train_experts", main)
