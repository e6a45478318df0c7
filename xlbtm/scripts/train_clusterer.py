"""Fit a clusterer: TF-IDF (word|subword) + (balanced) k-means, or typological language groups.

    python -m xlbtm.scripts.train_clusterer --data-dir D --num-clusters K [--balanced] --output-dir O \
        [--featurizer word|subword] [--tokenizer PATH] [--max-docs N] [--seed S] [--eval]
    python -m xlbtm.scripts.train_clusterer --typological [--typology-mode balanced|xelm] --langs en,fr,... \
        --num-clusters K --output-dir O [--data-dir D]
    python -m xlbtm.scripts.train_clusterer --eval --output-dir O --data-dir D     # evaluate an existing one

With --parallel-side src|tgt|both, --data-dir holds translation pairs and each pair is read as that side.
"""

from __future__ import annotations

import json

from xlbtm.cli import add_parallel_side_arg, add_skip_bad_lines_arg, get_logger, make_parser, run_script
from xlbtm.errors import UsageError

log = get_logger("cluster")


def build_parser():
    p = make_parser("train_clusterer", __doc__.splitlines()[0])
    p.add_argument("--data-dir", "--path-to-data", dest="data_dir", default=None,
                   help="corpus root, split or shard dir: every *.jsonl[.gz] below it is used")
    p.add_argument("--num-clusters", type=int, default=None, help="K")
    p.add_argument("--balanced", action="store_true",
                   help="balanced k-means: cluster sizes differ by at most 1 while fitting (as c-BTM's --balanced)")
    p.add_argument("--output-dir", required=True, help="clusterer directory to write (or to read with --eval)")
    p.add_argument("--featurizer", choices=["word", "subword"], default="subword",
                   help="subword: TF-IDF over the seed tokenizer's ids (needs --tokenizer); word: c-BTM-style words")
    p.add_argument("--tokenizer", default=None, help="seed tokenizer dir (HF / sentencepiece) for --featurizer subword; with --typological: count "
                        "tokens (not characters) per language for --typology-mode balanced")
    p.add_argument("--max-docs", type=int, default=None,
                   help="fit on at most N documents drawn evenly across all files; all when not given")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling, SVD and k-means++ init")
    p.add_argument("--eval", action="store_true",
                   help="print cluster sizes, top terms and lang mix per cluster (after training; alone: for an "
                        "existing clusterer in --output-dir on --data-dir) and write eval.json")
    p.add_argument("--typological", action="store_true", help="group languages by URIEL syntax features")
    p.add_argument("--typology-mode", choices=["balanced", "xelm"], default="balanced",
                   help="xelm: X-ELM's greedy pairwise merging (K = #langs / 2^m); balanced: any K, groups "
                        "balanced by token count, typologically close languages together")
    p.add_argument("--langs", default=None, help="comma-separated ISO 639-1 codes (with --typological)")
    p.add_argument("--device", default=None,
                   help="k-means device: cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when available, "
                        "else cpu)")
    add_skip_bad_lines_arg(p)
    add_parallel_side_arg(p)
    return p


def _eval(clusterer, args, sample=None) -> None:
    from pathlib import Path

    from xlbtm.cluster.train import evaluate, format_eval, sample_documents
    from xlbtm.io import write_json

    if sample is None:
        if args.data_dir is None:
            raise UsageError("--eval needs --data-dir (the documents to evaluate on)")
        sample = sample_documents(args.data_dir, args.max_docs, args.seed, skip_bad_lines=args.skip_bad_lines,
                                  parallel_side=args.parallel_side)
    ev = evaluate(clusterer, sample.texts, sample.langs)
    print(format_eval(ev))
    write_json(Path(args.output_dir) / "eval.json", ev)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from xlbtm.cluster.artifact import describe, load_clusterer

    if args.max_docs is not None and args.max_docs < 1:
        raise UsageError(f"--max-docs must be >= 1, got {args.max_docs}")
    if args.eval and args.num_clusters is None and not args.typological:
        _eval(load_clusterer(args.output_dir), args)  # evaluate an existing clusterer
        return 0
    if args.num_clusters is None:
        raise UsageError("--num-clusters is required")
    if args.typological:
        from xlbtm.cluster.train import train_typological_clusterer

        if not args.langs:
            raise UsageError("--typological needs --langs (comma-separated ISO 639-1 codes, e.g. en,fr,de)")
        if args.balanced:
            log.info("--balanced is implied by --typology-mode balanced and ignored with --typological")
        c = train_typological_clusterer(args.langs.split(","), args.num_clusters, args.output_dir,
                                        mode=args.typology_mode, data_dir=args.data_dir, tokenizer=args.tokenizer,
                                        skip_bad_lines=args.skip_bad_lines, parallel_side=args.parallel_side)
        log.info(f"wrote {args.output_dir}: {describe(c)}")
        print(json.dumps(c.lang_to_cluster, ensure_ascii=False))
        if args.eval and args.data_dir:
            _eval(c, args)
        return 0
    if args.data_dir is None:
        raise UsageError("--data-dir is required (corpus root, split or shard directory)")
    from xlbtm.cluster.train import train_tfidf_clusterer

    c, sample = train_tfidf_clusterer(args.data_dir, args.num_clusters, args.output_dir, balanced=args.balanced,
                                      featurizer=args.featurizer, tokenizer=args.tokenizer,
                                      max_docs=args.max_docs, seed=args.seed, skip_bad_lines=args.skip_bad_lines,
                                      parallel_side=args.parallel_side, device=args.device)
    log.info(f"wrote {args.output_dir}: {describe(c)}")
    if args.eval:
        _eval(c, args, sample)
    return 0


if __name__ == "__main__":
    run_script("train_clusterer", main)
