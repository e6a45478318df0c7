"""Add experts for new languages to a trained ensemble (X-ELM's HMR): extend the clusterer, branch, train.

    python -m xlbtm.scripts.add_experts --experts-dir runs/4_clusters --path-to-clusterer clusterers/typo4 \\
        --langs pl,cs --path-to-data data --init nearest --output-clusterer clusterers/typo4+pl,cs \\
        --run slurm --max-steps 2000 --learning-rate 2e-4 --batch-size 8 --tokens-per-sample 2048 --num-gpus 8

Each new language becomes a cluster of its own (clusters 0..K-1 keep their experts and their routing); its
expert branches from --init and trains on the language's documents of --path-to-data, into --experts-dir.
Evaluate old and new together with `eval_ensemble --experts-dir <experts-dir> --path-to-clusterer
<output-clusterer>`. Rerunning the same command resumes the training. Everything it can refuse is refused
before it writes anything; `--dry-run` prints the plan and writes nothing. An existing --output-clusterer (and
the work dir, the new run dirs) is replaced only when it is add_experts' own output for the same inputs.
"""

from __future__ import annotations

from xlbtm.cli import get_logger, make_parser, run_script
from xlbtm.config import add_config_args, config_from_args, config_values
from xlbtm.launch.site import site_from_args
from xlbtm.scripts.train_experts import add_training_args
from xlbtm.train.config import ADD, AddExpertsRequest, TrainExpertsRequest

log = get_logger("add_experts")


def build_parser():
    p = make_parser("add_experts", __doc__.split("\n\n")[0])
    groups = add_config_args(p, AddExpertsRequest)  # its own flags: AddExpertsRequest's fields
    add_training_args(p, groups[ADD])  # how the new experts train: train_experts' flags, same names
    return p


def main(argv=None):
    from xlbtm.grow import add_experts

    args = build_parser().parse_args(argv)
    # the training flags as train_experts takes them; what to train (seed, clusters, dirs) add_experts sets
    train = TrainExpertsRequest(
        **config_values(TrainExpertsRequest, args),
        seed_model="",
        num_clusters=1,
        serialization_dir="",
        site=site_from_args(args),
    )
    req = config_from_args(AddExpertsRequest, args, train=train)
    grown = add_experts(req)
    for g in grown:
        parent = g.init.get("parent")
        print(
            f"{g.lang}: cluster {g.cluster} ({g.init['method']}"
            f"{f' from {parent}' if isinstance(parent, str) else ''}) -> {g.run_dir}"
        )
    if grown:
        print(
            f"evaluate: python -m xlbtm.scripts.eval_ensemble --experts-dir {req.experts_dir} "
            f"--path-to-clusterer {req.output_clusterer} --ensemble-type lang|clustering ..."
        )
    return 0


if __name__ == "__main__":
    run_script("add_experts", main)
