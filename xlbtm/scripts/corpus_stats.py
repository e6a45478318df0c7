"""Check a jsonl corpus and print its size: documents, bytes and documents per language of a split.

Reads every line, so it doubles as a validator: the first bad line stops it with `path:line: what is
wrong` and exit status 2 (or, with --skip-bad-lines, bad lines are counted and reported).
"""

from __future__ import annotations

import json

from xlbtm.cli import add_skip_bad_lines_arg, get_logger, make_parser, run_script

STAGE = "corpus_stats"


def build_parser():
    p = make_parser(STAGE, __doc__)
    p.add_argument(
        "--data-dir",
        "--path-to-data",
        dest="data_dir",
        required=True,
        help="corpus root holding <split>/<shard>/*.jsonl[.gz]",
    )
    p.add_argument(
        "--split",
        action="append",
        help="split to read (train, valid, valid/<subset>); repeat for several (default: train)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per split instead of a table")
    add_skip_bad_lines_arg(p)
    return p


def main(argv=None):
    from xlbtm.corpus import Corpus, split_stats

    args = build_parser().parse_args(argv)
    corpus = Corpus(args.data_dir, skip_bad_lines=args.skip_bad_lines)
    log = get_logger(STAGE)
    for split in args.split or ["train"]:
        s = split_stats(corpus, split)
        if s["skipped_lines"]:
            log.warning(
                "split %s: skipped %d bad lines; first: %s", split, s["skipped_lines"], s["skipped_examples"][0]
            )
        if args.json:
            print(json.dumps(s, ensure_ascii=False), flush=True)
            continue
        print(
            f"split {split}: {s['documents']} documents, {s['bytes']} bytes ({s['bytes'] / 1e6:.1f} MB) "
            f"in {s['files']} files; skipped {s['skipped_lines']} bad lines"
        )
        for lang, n in s["per_lang"].items():
            print(f"  {lang:<8} {n:>10}")
    return 0


if __name__ == "__main__":
    run_script(STAGE, main)
