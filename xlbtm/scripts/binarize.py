"""Tokenize a corpus once into per-cluster, per-split token streams (memmap .bin uint32 + .idx offsets).

    python -m xlbtm.scripts.binarize --path-to-data data/c4 --path-to-clusters-dir clusters/c4 \\
        --tokenizer /ckpt/xglm-564M --output-dir data-bin/c4 --splits train valid --workers 8

Atomic and resumable per split. Documents without a cluster are an error unless --allow-unassigned.
Without --path-to-clusters-dir every document goes to cluster 0 of 1 (the dense baseline).
"""

from __future__ import annotations

import os

from xlbtm.cli import make_parser, run_script
from xlbtm.formats.binarized import binarized_lock


def build_parser():
    from xlbtm.cli import add_skip_bad_lines_arg

    p = make_parser("binarize", __doc__.split("\n\n")[0])
    p.add_argument("--path-to-data", "--data-dir", dest="data_dir", required=True, help="jsonl corpus root")
    p.add_argument(
        "--path-to-clusters-dir",
        dest="clusters_dir",
        default=None,
        help="cluster files + manifest.json (omit for the dense baseline)",
    )
    p.add_argument("--num-clusters", type=int, default=None, help="checked against the clusters manifest")
    p.add_argument("--tokenizer", required=True, help="HF tokenizer dir")
    p.add_argument("--output-dir", required=True, help="binarized dir to write (resumes if it exists)")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits, e.g. train valid/c4")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="tokenizer worker processes (0 = in this process)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="documents per tokenizer batch")
    p.add_argument(
        "--allow-unassigned",
        action="store_true",
        help="drop documents that have no cluster instead of stopping with an error",
    )
    add_skip_bad_lines_arg(p)
    return p


def main(argv=None):
    from xlbtm.data.binarize import binarize, refuse_binarize_overlap
    from xlbtm.tokenizer import load_tokenizer

    args = build_parser().parse_args(argv)
    tok = load_tokenizer(args.tokenizer)
    refuse_binarize_overlap(args.data_dir, args.output_dir, args.clusters_dir, tok.path)  # before the lock file
    # the dir's lock, as train_experts takes it: a run binarizing the same dir meanwhile is waited for
    with binarized_lock(args.output_dir).held(lambda line: print(line, flush=True)):
        res = binarize(
            args.data_dir,
            args.output_dir,
            tok,
            splits=args.splits,
            clusters_dir=args.clusters_dir,
            num_clusters=args.num_clusters,
            workers=args.workers,
            batch_size=args.batch_size,
            allow_unassigned=args.allow_unassigned,
            skip_bad_lines=args.skip_bad_lines,
        )
    for split, st in res.manifest["splits"].items():
        print(
            f"{split}: tokens per cluster {st['tokens']}" + (" (already done)" if split in res.skipped_splits else "")
        )
    print(f"wrote {res.out_dir}/manifest.json")
    return 0


if __name__ == "__main__":
    run_script("binarize", main)
