"""Train a small SentencePiece (unigram) tokenizer on a corpus sample and save it as a Hugging Face
directory with the fairseq/XGLM special ids (<s>=0 <pad>=1 </s>=2 <unk>=3) and <mask>.

For demos and tests that train from scratch; real runs use the seed model's own tokenizer.
"""

from __future__ import annotations

from xlbtm.cli import add_skip_bad_lines_arg, get_logger, make_parser, run_script

STAGE = "train_tokenizer"


def build_parser():
    p = make_parser(STAGE, __doc__)
    p.add_argument(
        "--data-dir",
        "--path-to-data",
        dest="data_dir",
        required=True,
        help="corpus root holding <split>/<shard>/*.jsonl[.gz]",
    )
    p.add_argument("--split", default="train", help="split to sample documents from")
    p.add_argument(
        "--out",
        "--output-dir",
        dest="out",
        required=True,
        help="output tokenizer directory (an earlier train_tokenizer output of the same --data-dir is replaced; "
        "any other existing directory is refused)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=8000,
        help="target SentencePiece vocabulary (soft limit; grown if the scripts need more characters)",
    )
    p.add_argument("--sample-docs", type=int, default=20000, help="documents sampled uniformly from the split")
    p.add_argument(
        "--style",
        choices=("xlmr", "xglm"),
        default="xlmr",
        help="extra symbols after the pieces: xlmr = <mask>; xglm = <madeupword0-6> + <mask>",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    add_skip_bad_lines_arg(p)
    return p


def main(argv=None):
    from xlbtm.errors import UsageError
    from xlbtm.io import output_owner
    from xlbtm.tokenizer import load_tokenizer, train_tokenizer_from_corpus

    args = build_parser().parse_args(argv)
    if args.vocab_size < 16:
        raise UsageError("--vocab-size must be at least 16")
    if args.sample_docs < 1:
        raise UsageError("--sample-docs must be >= 1")
    out = train_tokenizer_from_corpus(
        args.data_dir,
        args.out,
        split=args.split,
        vocab_size=args.vocab_size,
        sample_docs=args.sample_docs,
        seed=args.seed,
        style=args.style,
        skip_bad_lines=args.skip_bad_lines,
        owner=output_owner(STAGE, {"--data-dir": args.data_dir}),
    )
    tok = load_tokenizer(out)
    get_logger(STAGE).info("wrote %s: vocab %d, fingerprint %s", out, tok.vocab_size, tok.fingerprint[:16])
    return 0


if __name__ == "__main__":
    run_script(STAGE, main)
