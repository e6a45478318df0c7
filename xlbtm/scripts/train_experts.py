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

import dataclasses

from xlbtm.cli import get_logger, make_parser, run_script

log = get_logger("train_experts")


def _default(name: str):
    """A flag's default is the request's (xlbtm.train.plan.TrainExpertsRequest), whose training defaults are
    TrainConfig's: one source, so the CLI and the library cannot drift apart."""
    from xlbtm.train.plan import TrainExpertsRequest

    f = {f.name: f for f in dataclasses.fields(TrainExpertsRequest)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def build_parser():
    p = make_parser("train_experts", __doc__.split("\n\n")[0])
    g = p.add_argument_group("what to train")
    g.add_argument("--seed-model", required=True,
                   help="HF dir, metaseq/fairseq .pt, xlbtm consolidated.pt, or a preset name for a random init "
                        "(e.g. debug)")
    g.add_argument("--model-size", default=None, help="preset naming the architecture when the seed does not")
    g.add_argument("--tokenizer", default=None,
                   help="HF tokenizer dir (default: the seed's own; required with a preset seed)")
    g.add_argument("--objective", choices=["clm", "mlm", "tlm", "mlm+tlm"], default=None,
                   help="clm (XGLM), or for XLM-R: mlm, tlm (translation LM on --parallel-data only) or mlm+tlm "
                        "(--tlm-ratio of the samples TLM); default from the seed's architecture (clm or mlm)")
    g.add_argument("--path-to-clusters-dir", default=None, help="cluster files + manifest.json (not for K=1)")
    g.add_argument("--num-clusters", type=int, required=True, help="K; 1 = dense baseline (no filtering)")
    g.add_argument("--train-cluster", default=None, help="only these clusters, e.g. 1,3,5 (default: all)")
    g.add_argument("--data-name", default=None, help="dataset name (corpus at <path-to-data>/<data-name> if present)")
    g.add_argument("--path-to-data", default=None,
                   help="jsonl corpus root (train/<shard>/*.jsonl, valid/...); required unless --objective tlm")
    g.add_argument("--parallel-data", default=None,
                   help="translation pairs for --objective tlm / mlm+tlm: train/<shard>/*.jsonl [, valid/...] of "
                        '{"src", "tgt", "src_lang", "tgt_lang"}; with K > 1 routed by '
                        "--path-to-parallel-clusters-dir, else every expert reads all pairs")
    g.add_argument("--path-to-parallel-clusters-dir", default=None,
                   help="cluster files of --parallel-data (cluster --parallel-side tgt, with the clusterer of "
                        "--path-to-clusters-dir): each expert trains TLM on its own cluster's pairs (K > 1)")
    g.add_argument("--serialization-dir", required=True,
                   help="experts go to <serialization-dir>/<K>_clusters/<run-name>.cluster<i>/")
    g.add_argument("--run-name", default=None, help="default: --data-name or 'run'")
    add_training_args(p, g)
    return p


def add_training_args(p, g) -> None:
    """The flags of how experts train (launch, binarization, resources, optimization, the TrainingSettings,
    SLURM): train_experts' and, under the same names, add_experts'. `g` is the parser's "what to train" group."""
    from xlbtm.cli import add_settings_args
    from xlbtm.launch.site import add_slurm_args
    from xlbtm.train.config import TrainingSettings

    g.add_argument("--run", choices=["slurm", "local", "debug"], required=True,
                   help="slurm: one job per expert; local: the same jobs as local processes; debug: in this process")
    g.add_argument("--binarized-dir", default=None,
                   help="binarized data (default <serialization-dir>/<K>_clusters/data-bin/<data-name>.<tok hash>)")
    g.add_argument("--binarize-workers", type=int, default=_default("binarize_workers"),
                   help="tokenizer processes; with --run slurm binarization is one job with this many CPUs (+1)")
    g.add_argument("--allow-unassigned", action="store_true",
                   help="drop documents without a cluster instead of stopping with an error")

    r = p.add_argument_group("resources")
    r.add_argument("--num-nodes", type=int, default=_default("num_nodes"), help="nodes per expert job")
    r.add_argument("--num-gpus", type=int, default=_default("num_gpus"),
                   help="GPUs (tasks) per node; CPU workers without GPUs")
    r.add_argument("--device", choices=["auto", "cuda", "cpu"], default=_default("device"),
                   help="auto: $XLBTM_DEVICE if set, else cuda when GPUs are visible locally / offered by SLURM "
                        "partitions")
    r.add_argument("--dry-run", action="store_true", help="print the plan and the resources, submit nothing")
    r.add_argument("--no-wait", action="store_true", help="submit and return (slurm); default waits for the jobs")

    o = p.add_argument_group("optimization")
    o.add_argument("--max-steps", "--max-update", dest="max_steps", type=int, required=True,
                   help="optimizer steps per expert (metaseq's --max-update)")
    o.add_argument("--step-allocation", choices=["equal", "proportional"], default=_default("step_allocation"),
                   help="equal: every expert trains --max-steps; proportional: the K x --max-steps total is shared "
                        "by each cluster's training tokens (printed in the plan); the dense baseline is unchanged")
    # the training settings: generated from TrainingSettings (flag names, defaults and help live there)
    add_settings_args(p, TrainingSettings, {"what to train": g, "resources": r, "optimization": o})
    add_slurm_args(p)


def main(argv=None):
    from xlbtm.train.experts import all_completed, describe_results, run_plan
    from xlbtm.train.plan import TrainExpertsRequest, describe_plan, plan_experts

    args = build_parser().parse_args(argv)
    plan = plan_experts(TrainExpertsRequest.from_args(args))
    for line in describe_plan(plan):
        print(line)
    if args.dry_run:
        print("dry run: nothing binarized or submitted")
        return 0
    results = run_plan(plan)
    if results is None:  # --run slurm --no-wait
        print("submitted; rerun the same command to resume after a failure")
        return 0
    for line in describe_results(plan, results):
        print(line)
    return 0 if all_completed(results) else 3


if __name__ == "__main__":
    run_script("train_experts", main)
