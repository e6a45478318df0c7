"""Add experts for new languages to a trained ensemble (X-ELM's HMR): extend the clusterer, branch, train.

    python -m xlbtm.scripts.add_experts --experts-dir runs/4_clusters --path-to-clusterer clusterers/typo4 \\
        --langs pl,cs --path-to-data data --init nearest --output-clusterer clusterers/typo4+pl,cs \\
        --run slurm --max-steps 2000 --learning-rate 2e-4 --batch-size 8 --tokens-per-sample 2048 --num-gpus 8

Each new language becomes a cluster of its own (clusters 0..K-1 keep their experts and their routing); its
expert branches from --init and trains on the language's documents of --path-to-data, into --experts-dir.
Evaluate old and new together with `eval_ensemble --experts-dir <experts-dir> --path-to-clusterer
<output-clusterer>`. Rerunning the same command resumes the training.
"""

from __future__ import annotations

from xlbtm.cli import get_logger, make_parser, run_script

log = get_logger("add_experts")


def build_parser():
    from xlbtm.scripts.train_experts import add_training_args

    p = make_parser("add_experts", __doc__.split("\n\n")[0])
    g = p.add_argument_group("what to add")
    g.add_argument("--experts-dir", required=True, help="the experts to grow: the <K>_clusters dir train_experts wrote")
    g.add_argument("--path-to-clusterer", required=True, help="the clusterer the experts were trained on")
    g.add_argument("--langs", required=True, help="the new languages, comma-separated (e.g. pl,cs): one expert each")
    g.add_argument("--path-to-data", "--data-dir", dest="path_to_data", required=True,
                   help="corpus holding the new languages' documents (documents of other languages are ignored)")
    g.add_argument("--init", default="nearest",
                   help="where each new expert starts: nearest (the typologically closest expert, X-ELM), average "
                        "(posterior-weighted parameter average of all experts, BTM), seed (the experts' seed) or "
                        "expert:K")
    g.add_argument("--output-clusterer", required=True, help="directory for the extended clusterer")
    g.add_argument("--max-docs-per-lang", type=int, default=2000,
                   help="documents per new language for a TF-IDF centroid and the --init average posterior")
    g.add_argument("--objective", choices=["clm", "mlm", "tlm", "mlm+tlm"], default=None,
                   help="how the new experts train (default: as the experts were trained); tlm / mlm+tlm read "
                        "--parallel-data")
    g.add_argument("--parallel-data", default=None,
                   help="translation pairs (train/<shard>/*.jsonl of {src, tgt, src_lang, tgt_lang}) for tlm / "
                        "mlm+tlm experts: a new expert trains on the pairs whose tgt_lang is its language")
    add_training_args(p, g)
    return p


def main(argv=None):
    import dataclasses

    from xlbtm.grow import AddExpertsRequest, add_experts
    from xlbtm.launch.site import site_from_args
    from xlbtm.train.config import TrainExpertsRequest

    args = build_parser().parse_args(argv)
    # the training flags as train_experts takes them; what to train (seed, clusters, dirs) add_experts sets
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainExpertsRequest) if hasattr(args, f.name)}
    train = TrainExpertsRequest(**given, seed_model="", num_clusters=1, serialization_dir="", site=site_from_args(args))
    grown = add_experts(AddExpertsRequest(
        experts_dir=args.experts_dir, path_to_clusterer=args.path_to_clusterer, langs=args.langs.split(","),
        path_to_data=args.path_to_data, output_clusterer=args.output_clusterer, init=args.init, train=train,
        max_docs_per_lang=args.max_docs_per_lang, objective=args.objective, parallel_data=args.parallel_data))
    for g in grown:
        parent = g.init.get("parent")
        print(f"{g.lang}: cluster {g.cluster} ({g.init['method']}"
              f"{f' from {parent}' if isinstance(parent, str) else ''}) -> {g.run_dir}")
    if grown:
        print(f"evaluate: python -m xlbtm.scripts.eval_ensemble --experts-dir {args.experts_dir} "
              f"--path-to-clusterer {args.output_clusterer} --ensemble-type lang|clustering ...")
    return 0


if __name__ == "__main__":
    run_script("add_experts", main)
