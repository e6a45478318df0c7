"""Fit a clusterer: TF-IDF (word|subword) + (balanced) k-means, or typological language groups.

    python -m xlbtm.scripts.train_clusterer --data-dir D --num-clusters K [--balanced] --output-dir O \
        [--featurizer word|subword] [--tokenizer PATH] [--max-docs N] [--seed S] [--eval]
    python -m xlbtm.scripts.train_clusterer --typological [--typology-mode balanced|xelm] --langs en,fr,... \
        --num-clusters K --output-dir O [--data-dir D]
    python -m xlbtm.scripts.train_clusterer --eval --output-dir O --data-dir D     # evaluate an existing one

With --parallel-side src|tgt|both, --data-dir holds translation pairs and each pair is read as that side.
"""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.cluster.config import ClustererConfig
from xlbtm.config import add_config_args, config_from_args


def build_parser():
    p = make_parser("train_clusterer", __doc__.splitlines()[0])
    add_config_args(p, ClustererConfig)  # every flag, its default and help: ClustererConfig's fields
    return p


def main(argv=None):
    from xlbtm.cluster.train import run_train_clusterer

    run_train_clusterer(config_from_args(ClustererConfig, build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    run_script("train_clusterer", main)
