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

from xlbtm.cli import get_logger, make_parser, run_script
from xlbtm.cluster.config import AssignConfig
from xlbtm.config import add_config_args, config_from_args
from xlbtm.launch.site import add_slurm_args, site_from_args

log = get_logger("cluster")


def build_parser():
    p = make_parser("cluster", __doc__.splitlines()[0])
    add_config_args(p, AssignConfig)  # every flag, its default and help: AssignConfig's fields
    add_slurm_args(p)
    return p


def main(argv=None):
    from xlbtm.cluster.assign import assign_corpus

    args = build_parser().parse_args(argv)
    cfg = config_from_args(AssignConfig, args, site=site_from_args(args) if args.run == "slurm" else None)
    m = assign_corpus(
        cfg.data_dir,
        cfg.path_to_clusterer,
        cfg.output_prefix,
        cfg.split,
        run=cfg.run,
        num_clusters=cfg.num_clusters,
        job_dir=cfg.job_dir,
        workers=cfg.num_workers,
        skip_bad_lines=cfg.skip_bad_lines,
        parallel_side=cfg.parallel_side,
        site=cfg.site,
    )
    s = m["splits"][cfg.split]
    log.info(f"{cfg.split}: {sum(s['documents'])} documents -> {cfg.output_prefix}; per cluster: {s['documents']}")
    return 0


if __name__ == "__main__":
    run_script("cluster", main)
