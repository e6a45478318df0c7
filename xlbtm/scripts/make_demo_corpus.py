"""Write the synthetic multilingual demo corpus (c-BTM layout) used by the quickstart and the tests."""

from __future__ import annotations

from xlbtm.cli import get_logger, make_parser, run_script

STAGE = "make_demo_corpus"


def build_parser():
    from xlbtm.demo_corpus import DEFAULT_LANGS, LANGUAGES

    p = make_parser(STAGE, __doc__)
    p.add_argument(
        "--out",
        "--output-dir",
        dest="out",
        required=True,
        help="output data dir; gets train/<shard>/demo.jsonl and valid/demo.jsonl "
        "(an earlier demo corpus there is replaced; any other non-empty dir is refused)",
    )
    p.add_argument("--num-train-docs", type=int, default=2000, help="number of train documents")
    p.add_argument("--num-valid-docs", type=int, default=200, help="number of valid documents")
    p.add_argument("--num-shards", type=int, default=2, help="train shard directories (00000, 00001, ...)")
    p.add_argument(
        "--langs", default=",".join(DEFAULT_LANGS), help=f"comma-separated languages, from: {','.join(LANGUAGES)}"
    )
    p.add_argument("--seed", type=int, default=0, help="same seed and sizes give byte-identical files")
    return p


def main(argv=None):
    from xlbtm.demo_corpus import write_demo_corpus

    args = build_parser().parse_args(argv)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    s = write_demo_corpus(
        args.out,
        n_train=args.num_train_docs,
        n_valid=args.num_valid_docs,
        seed=args.seed,
        num_shards=args.num_shards,
        langs=langs,
    )
    get_logger(STAGE).info(
        "wrote %d train + %d valid documents (%s; %.1f MB) to %s",
        s["train"]["documents"],
        s["valid"]["documents"],
        ",".join(s["languages"]),
        s["bytes"] / 1e6,
        s["out_dir"],
    )
    return 0


if __name__ == "__main__":
    run_script(STAGE, main)
