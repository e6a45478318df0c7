"""Assign every document of a split to a cluster (c-BTM's cluster step).

    python -m xlbtm.scripts.cluster --data-dir D --path-to-clusterer C [--num-clusters K] --output-prefix O \
        --split train|valid[/X] --run local|slurm [--job-dir J]

Writes O/<split>/<shard>/<file>.jsonl ({"sp_id", "cluster"} lines) and O/manifest.json. Re-running skips
finished files (same clusterer fingerprint, unchanged input) and redoes the rest. Progress is logged as files
(--run local) or array tasks (--run slurm) finish: files done / total, documents, docs/s of the whole job so far
(every completion for up to 20 files, else at most every 5 s).

Parallel data (`--parallel-side tgt`): pairs are assigned by their target side, with the clusterer the
monolingual corpus was assigned with, and train_experts --path-to-parallel-clusters-dir routes each expert's
TLM pairs by these files.
"""

from __future__ import annotations

from xlbtm.cli import add_parallel_side_arg, add_skip_bad_lines_arg, get_logger, make_parser, run_script
from xlbtm.launch.site import add_slurm_args, site_from_args

log = get_logger("cluster")


def build_parser():
    p = make_parser("cluster", __doc__.splitlines()[0])
    p.add_argument("--data-dir", "--path-to-data", dest="data_dir", required=True, help="corpus root (<data>/<split>/<shard>/*.jsonl[.gz])")
    p.add_argument("--path-to-clusterer", required=True, help="clusterer dir from xlbtm.scripts.train_clusterer")
    p.add_argument("--num-clusters", type=int, default=None,
                   help="accepted for c-BTM compatibility; must agree with the clusterer")
    p.add_argument("--output-prefix", "--output-dir", dest="output_prefix", required=True, help="clusters dir to write")
    p.add_argument("--split", required=True, help="train, valid or valid/<subset>")
    p.add_argument("--run", choices=["local", "slurm"], default="local",
                   help="local: worker processes on this machine; slurm: submitit job arrays (waits for them)")
    p.add_argument("--job-dir", default=None, help="submitit logs for --run slurm; O/jobs when not given")
    p.add_argument("--num-workers", type=int, default=None,
                   help="files clustered at once for --run local, on worker processes forked from this one "
                        "(default: one per CPU this process may use, at most one per file); sentencepiece gets "
                        "CPUs // N threads per file, BLAS one")
    add_skip_bad_lines_arg(p)
    add_parallel_side_arg(p)
    add_slurm_args(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from xlbtm.cluster.assign import assign_corpus

    m = assign_corpus(args.data_dir, args.path_to_clusterer, args.output_prefix, args.split, run=args.run,
                      num_clusters=args.num_clusters, job_dir=args.job_dir, workers=args.num_workers,
                      skip_bad_lines=args.skip_bad_lines, parallel_side=args.parallel_side,
                      site=site_from_args(args) if args.run == "slurm" else None)
    s = m["splits"][args.split]
    log.info(f"{args.split}: {sum(s['documents'])} documents -> {args.output_prefix}; per cluster: {s['documents']}")
    return 0


if __name__ == "__main__":
    run_script("cluster", main)
