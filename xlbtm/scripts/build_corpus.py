"""Build a real corpus (manpages or gettext) from the Debian packages it comes from.

`manpages`: translated manual pages (Debian's `manpages-*` packages) rendered by `man -l` at width 100;
`gettext`: English -> translation pairs from the `.mo` catalogs installed packages carry. Both write the
c-BTM layout (train/00000/*.jsonl, valid/*.jsonl), split by page name / package so that every translation of
a page and every string of a package is in one split. `scripts/build_corpora.sh` installs the packages
(apt-get, as root) and runs both.
"""

from __future__ import annotations

from typing import get_args

from xlbtm.cli import get_logger, make_parser, run_script
from xlbtm.config import add_config_args, config_from_args
from xlbtm.corpus.build import BuildCorpusConfig, CorpusKind

STAGE = "build_corpus"


def build_parser():
    p = make_parser(STAGE, __doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument(
        "corpus",
        choices=list(get_args(CorpusKind)),
        help="manpages: monolingual documents in 21 languages; gettext: parallel pairs, English -> 16 languages",
    )
    add_config_args(p, BuildCorpusConfig)  # every flag, its default and help: BuildCorpusConfig's fields
    return p


def main(argv=None):
    from xlbtm.corpus.build import build_corpus

    args = build_parser().parse_args(argv)
    config = config_from_args(BuildCorpusConfig, args, corpus=args.corpus)
    s = build_corpus(config)
    unit = "documents" if config.corpus == "manpages" else "pairs"
    get_logger(STAGE).info(
        "wrote %d train + %d valid %s (%.1f M + %.1f M characters; %s) to %s",
        s["train"]["lines"],
        s["valid"]["lines"],
        unit,
        s["train"]["chars"] / 1e6,
        s["valid"]["chars"] / 1e6,
        " ".join(f"{lang} {c['train']}+{c['valid']}" for lang, c in sorted(s["per_lang"].items())),
        config.output_dir,
    )
    return 0


if __name__ == "__main__":
    run_script(STAGE, main)
