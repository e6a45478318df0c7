"""The cluster commands' settings: `ClustererConfig` (train_clusterer) and `AssignConfig` (cluster), one typed
field per flag (xlbtm.config). Light on purpose: the assignment command imports neither torch nor sklearn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xlbtm.cli import PARALLEL_SIDE_HELP, SKIP_BAD_LINES_HELP
from xlbtm.config import option
from xlbtm.errors import UsageError
from xlbtm.launch.executor import JobRunMode
from xlbtm.launch.site import SiteConfig

ParallelSide = Literal["src", "tgt", "both"]


@dataclass(kw_only=True)
class ClustererConfig:
    data_dir: str | None = option(
        None, "corpus root, split or shard dir: every *.jsonl[.gz] below it is used", aliases=("--path-to-data",)
    )
    num_clusters: int | None = option(None, "K")
    balanced: bool = option(
        False, "balanced k-means: cluster sizes differ by at most 1 while fitting (as c-BTM's --balanced)"
    )
    output_dir: str = option(
        help="clusterer directory to write (an existing one only if it is train_clusterer's earlier output of the "
        "same --data-dir and --tokenizer), or to read with --eval"
    )
    featurizer: Literal["word", "subword"] = option(
        "subword",
        "what TF-IDF counts",
        choices_help={"subword": "the seed tokenizer's ids (needs --tokenizer)", "word": "c-BTM-style words"},
    )
    tokenizer: str | None = option(
        None,
        "seed tokenizer dir (HF / sentencepiece) for --featurizer subword; with --typological: count tokens "
        "(not characters) per language for --typology-mode balanced",
    )
    max_docs: int | None = option(None, "fit on at most N documents drawn evenly across all files; all when not given")
    seed: int = option(0, "seed of the sampling, SVD and k-means++ init")
    eval: bool = option(
        False,
        "print cluster sizes, top terms and lang mix per cluster (after training; alone: for an existing "
        "clusterer in --output-dir on --data-dir) and write eval.json",
    )
    typological: bool = option(False, "group languages by URIEL syntax features")
    typology_mode: Literal["balanced", "xelm"] = option(
        "balanced",
        "how languages are grouped",
        choices_help={
            "xelm": "X-ELM's greedy pairwise merging (K = #langs / 2^m)",
            "balanced": "any K, groups balanced by token count, typologically close languages together",
        },
    )
    langs: str | None = option(None, "comma-separated ISO 639-1 codes (with --typological)")
    device: str | None = option(
        None, "k-means device: cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when available, else cpu)"
    )
    skip_bad_lines: bool = option(False, SKIP_BAD_LINES_HELP)
    parallel_side: ParallelSide | None = option(None, PARALLEL_SIDE_HELP)

    def __post_init__(self):
        if self.max_docs is not None and self.max_docs < 1:
            raise UsageError(f"--max-docs must be >= 1, got {self.max_docs}")


@dataclass(kw_only=True)
class AssignConfig:
    data_dir: str = option(help="corpus root (<data>/<split>/<shard>/*.jsonl[.gz])", aliases=("--path-to-data",))
    path_to_clusterer: str = option(help="clusterer dir from xlbtm.scripts.train_clusterer")
    num_clusters: int | None = option(None, "accepted for c-BTM compatibility; must agree with the clusterer")
    output_prefix: str = option(help="clusters dir to write", aliases=("--output-dir",))
    split: str = option(help="train, valid or valid/<subset>")
    run: JobRunMode = option(
        "local",
        "where the files are assigned",
        choices_help={"local": "worker processes on this machine", "slurm": "submitit job arrays (waits for them)"},
    )
    job_dir: str | None = option(None, "submitit logs for --run slurm; O/jobs when not given")
    num_workers: int | None = option(
        None,
        "files clustered at once for --run local, on worker processes forked from this one (default: one per "
        "CPU this process may use, at most one per file); sentencepiece gets CPUs // N threads per file, "
        "BLAS one",
    )
    skip_bad_lines: bool = option(False, SKIP_BAD_LINES_HELP)
    parallel_side: ParallelSide | None = option(None, PARALLEL_SIDE_HELP)
    # not a flag: SLURM site settings (file < env < flags)
    site: SiteConfig | None = None
