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

from xlbtm.cli import get_logger, make_parser, run_script
from xlbtm.config import add_config_args
from xlbtm.launch.site import add_slurm_args
from xlbtm.train.config import TrainExpertsRequest

log = get_logger("train_experts")


def build_parser():
    p = make_parser("train_experts", __doc__.split("\n\n")[0])
    add_config_args(p, TrainExpertsRequest)  # every flag, its default and help: the request's fields
    add_slurm_args(p)
    return p


def add_training_args(p, g) -> None:
    """The flags of how experts train (launch, binarization, resources, optimization, the TrainingSettings,
    SLURM): train_experts' and, under the same names, add_experts'. `g` is the parser's "what to train" group;
    what to train (seed, clusters, dirs) add_experts decides itself."""
    add_config_args(p, TrainExpertsRequest, {"what to train": g}, skip=TrainExpertsRequest.WHAT_TO_TRAIN)
    add_slurm_args(p)


def main(argv=None):
    from xlbtm.train.experts import all_completed, describe_results, run_plan
    from xlbtm.train.plan import describe_plan, plan_experts

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
