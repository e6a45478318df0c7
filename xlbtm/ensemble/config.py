"""What `eval_ensemble` is asked to do: `EvalConfig`, one typed field per flag (xlbtm.config), and the routing
defaults every command that mixes experts shares (eval_ensemble, generate, the lm-eval model, the study)."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass
from typing import Literal

from xlbtm.cli import SKIP_BAD_LINES_HELP
from xlbtm.config import option
from xlbtm.errors import UsageError
from xlbtm.launch.site import SiteConfig
from xlbtm.runtime import dtype_arg

# routing temperature T of softmax(-dist / T): the one default of every command that routes by the clusterer
DEFAULT_TEMPERATURE = 0.1
DEFAULT_TOPK = -1  # experts kept per token: -1 = all

EnsembleType = Literal["clustering", "uniform", "lang", "oracle", "dense", "average"]
ENSEMBLE_TYPES: tuple[str, ...] = typing.get_args(EnsembleType)
ENSEMBLE_TYPE_HELP = {
    "clustering": "by the cluster posterior of each token's prefix (c-BTM; needs --path-to-clusterer with centroids)",
    "uniform": "every expert weighted 1/K",
    "lang": "each document by its language label through a typological clusterer (X-ELM)",
    "oracle": "each document scored by its best expert (an upper bound, not a method)",
    "dense": "one model (--model-paths of one run)",
    "average": "one model whose weights are the experts' uniform average (c-BTM's --average)",
}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _cluster_ids(text: str) -> list[int]:
    try:
        return _ints(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated cluster ids like 2,5, got {text!r}") from None


def _paths(text: str) -> list[str]:
    return [m for m in text.split(",") if m]


def _flatten(groups: list) -> list:
    """`--temperature 0.1 0.05` and `--temperature 0.1,0.05` alike: a list of comma lists, flattened."""
    return [x for g in groups for x in (g if isinstance(g, list) else [g])]


def _sweep(values: list) -> list[str]:
    return [str(v) for v in values]


@dataclass(kw_only=True)
class EvalConfig:
    """`eval_ensemble`'s settings: each field is its flag (`--data-dir` -> data_dir), with its default, help and
    choices here only; the script's parser is generated from this class."""

    data_dir: str = option(help="corpus root (c-BTM layout)", aliases=("--path-to-data",))
    data_subset: str = option("valid", "split to evaluate: valid or valid/<subset>")
    job_dir: str = option(help="output dir: score caches, result.json, report.md, plot", aliases=("--output-dir",))
    ensemble_type: EnsembleType = option("clustering", "how experts are mixed", choices_help=ENSEMBLE_TYPE_HELP)
    path_to_clusterer: str | None = option(
        None, "clusterer artifact dir (required for clustering and lang; checked against the experts)"
    )
    model_paths: list[str] = option(
        help="comma-separated expert run dirs or consolidated.pt files (order does not matter: experts are matched "
        "to clusters by expert.json)",
        default_factory=list,
        type=_paths,
        exclusive="experts",
        render=lambda v: [",".join(v)],
    )
    experts_dir: str | None = option(None, "directory holding the expert run dirs", exclusive="experts")
    temperatures: list[float] = option(
        help=f"routing temperature(s), default {DEFAULT_TEMPERATURE}; several values (or a comma list) sweep on "
        "the cached scores",
        flag="--temperature",
        nargs="+",
        type=_floats,
        metavar="T",
        parse=_flatten,
        default_factory=lambda: [DEFAULT_TEMPERATURE],
        render=_sweep,
    )
    topks: list[int] = option(
        help=f"experts kept per token, default {DEFAULT_TOPK} (all); several values sweep on the cached scores",
        flag="--topk",
        nargs="+",
        type=_ints,
        metavar="K",
        parse=_flatten,
        default_factory=lambda: [DEFAULT_TOPK],
        render=_sweep,
    )
    exclude_experts: list[int] = option(
        help="cluster ids of experts to switch off (data opt-out), e.g. 2,5: they are not loaded or scored (their "
        "run dirs may be gone) and every mixture is renormalized over the remaining experts; documents a lang "
        "ensemble would send to an excluded expert get the uniform mixture of the rest. Reported in "
        "result.json settings.excluded_experts",
        default_factory=list,
        type=_cluster_ids,
        metavar="IDS",
    )
    cbtm_compat: bool = option(False, "c-BTM's weights: softmax(-dist^2 / T) with dist already a squared distance")
    max_valid_steps: int | None = option(None, "evaluate at most this many documents (one document per step)")
    run: Literal["local", "slurm"] | None = option(
        None, "score each expert as a separate job (default: in this process)"
    )
    dense_result: str | None = option(
        None, "result.json (or its dir) of the dense baseline, compared per language in report.md"
    )
    batch_tokens: int = option(8192, "padded tokens per forward pass")
    context_window: int | None = option(
        None,
        "causal LMs: tokens per scoring window (default: the context the experts were trained with, "
        "expert.json tokens_per_sample); documents are scored whole, window by window. Masked LMs: the one "
        "window read per document (same default)",
    )
    stride: int | None = option(
        None,
        "causal LMs: step between windows (default: the window, c-BTM's non-overlapping blocks; smaller "
        "gives every later token at least window - stride tokens of context)",
    )
    parallel_data: str | None = option(
        None,
        "encoder (masked-LM) experts: also measure cross-lingual retrieval on the translation pairs of "
        "DIR/<--parallel-subset> ({src, tgt, src_lang, tgt_lang} jsonl): accuracy@1 per language of finding "
        "each tgt's own src by cosine of mean-pooled states, added to result.json (retrieval) and report.md",
        metavar="DIR",
    )
    parallel_subset: str = option("valid", "split of --parallel-data")
    retrieval_batch_size: int = option(
        1000,
        "candidate pool: each language's pairs are split into blocks of at most this many (near-equal "
        "size) and each tgt is matched against its block's sources",
    )
    retrieval_routing: Literal["target", "own"] = option(
        "target",
        "ensembles: which routing reads each side of a pair",
        choices_help={
            "target": "both sides with the experts its target side is routed to (those of the pool's language)",
            "own": "each side routed by its own text / lang",
        },
    )
    retrieval_centering: Literal["pool", "none"] = option(
        "pool",
        "sentence vectors before the cosines",
        choices_help={
            "pool": "each side's vectors centered on their pool's mean (removes the direction all of "
            "a language's sentences share)",
            "none": "raw cosines",
        },
    )
    retrieval_max_pairs: int | None = option(
        None, "read at most this many pairs per language (the first in file order; default all)"
    )
    device: str | None = option(None, "scoring device (default: $XLBTM_DEVICE, else cuda when available, else cpu)")
    skip_bad_lines: bool = option(False, SKIP_BAD_LINES_HELP)
    # not flags
    gpus_per_node: int = 0
    site: SiteConfig | None = None  # SLURM site settings (file < env < flags); None = file + env only

    def __post_init__(self):
        self.data_subset = self.data_subset.strip("/")
        self.parallel_subset = self.parallel_subset.strip("/")
        if self.ensemble_type not in ENSEMBLE_TYPES:
            raise UsageError(f"--ensemble-type must be one of {', '.join(ENSEMBLE_TYPES)}")
        if bool(self.model_paths) == bool(self.experts_dir):
            raise UsageError("give exactly one of --model-paths and --experts-dir")
        if self.ensemble_type in ("clustering", "lang") and not self.path_to_clusterer:
            raise UsageError(f"--ensemble-type {self.ensemble_type} needs --path-to-clusterer")
        if any(not (0 < t < float("inf")) for t in self.temperatures):  # also catches nan
            raise UsageError(f"--temperature values must be finite and > 0, got {self.temperatures}")
        if any(k == 0 or k < -1 for k in self.topks):
            raise UsageError(f"--topk takes -1 (every expert) or a count >= 1, got {self.topks}")
        if self.batch_tokens <= 0:
            raise UsageError("--batch-tokens must be positive")
        if self.max_valid_steps is not None and self.max_valid_steps <= 0:
            raise UsageError("--max-valid-steps must be positive")
        if self.context_window is not None and self.context_window <= 0:
            raise UsageError("--context-window must be positive")
        if self.stride is not None and (
            self.stride <= 0 or (self.context_window and self.stride > self.context_window)
        ):
            raise UsageError("--stride must be in [1, --context-window]")
        if self.exclude_experts and self.ensemble_type == "dense":
            raise UsageError("--exclude-experts switches experts of an ensemble off; --ensemble-type dense has one")
        if self.parallel_data is not None:
            if self.ensemble_type == "oracle":
                raise UsageError(
                    "--parallel-data: retrieval has no oracle (the best expert by likelihood); run "
                    "it with another --ensemble-type (result.json's retrieval.experts holds every "
                    "single expert's accuracy)"
                )
            if self.retrieval_centering not in ("pool", "none"):
                raise UsageError(f"--retrieval-centering must be pool or none, got {self.retrieval_centering!r}")
            if self.retrieval_routing not in ("target", "own"):
                raise UsageError(f"--retrieval-routing must be target or own, got {self.retrieval_routing!r}")
            if self.retrieval_batch_size < 2:
                raise UsageError("--retrieval-batch-size must be >= 2 (a pool of one candidate is always right)")
            if self.retrieval_max_pairs is not None and self.retrieval_max_pairs <= 0:
                raise UsageError("--retrieval-max-pairs must be positive")


LMType = Literal["clustering", "uniform", "dense", "average"]  # what scoring (lm-eval) can mix
LM_TYPE_HELP = {k: ENSEMBLE_TYPE_HELP[k] for k in typing.get_args(LMType)}
# generation also routes by a prompt's language: a prompt is a document whose `lang` the user states
GenerateType = Literal["clustering", "uniform", "lang", "dense", "average"]
GENERATE_TYPE_HELP = {
    **{k: ENSEMBLE_TYPE_HELP[k] for k in typing.get_args(GenerateType)},
    "lang": "each prompt by its language (--lang, or the 'lang' field of an --input line) through a typological "
    "clusterer (X-ELM)",
}


@dataclass(kw_only=True)
class GenerateConfig:
    """`generate`'s settings: each field is its flag; the script's parser is generated from this class."""

    experts_dir: str | None = option(None, "directory holding the expert run dirs", exclusive="experts")
    model_paths: list[str] = option(
        help="comma-separated expert run dirs or consolidated.pt files (one for a single model)",
        default_factory=list,
        type=_paths,
        exclusive="experts",
        render=lambda v: [",".join(v)],
    )
    path_to_clusterer: str | None = option(None, "clusterer artifact dir (routes the experts)")
    ensemble_type: GenerateType | None = option(
        None,
        "how the experts are mixed (default: clustering with --path-to-clusterer, dense for one model)",
        choices_help=GENERATE_TYPE_HELP,
    )
    tokenizer: str | None = option(
        None,
        "tokenizer dir of a single model that has no expert.json (e.g. a converted consolidated.pt); experts "
        "name their own",
    )
    prompt: str | None = option(None, "the prompt text", exclusive="prompts", exclusive_required=False)
    input: str | None = option(
        None,
        'jsonl file of prompts ({"prompt": ..., "lang": ...} per line; lang only for --ensemble-type lang)',
        exclusive="prompts",
        exclusive_required=False,
    )
    lang: str | None = option(
        None, "--ensemble-type lang: the language of --prompt (and of --input lines without a 'lang' field)"
    )
    output: str | None = option(None, "write the generations as jsonl here (default: print only)")
    max_new_tokens: int = option(64, "tokens to generate at most")
    stop: list[str] = option(
        help="stop sequence (repeatable); the text is cut before it", default_factory=list, action="append"
    )
    temperature: float = option(DEFAULT_TEMPERATURE, "routing temperature")
    topk: int = option(DEFAULT_TOPK, "experts run per token (-1: all)")
    sample: bool = option(False, "sample from the mixture instead of greedy decoding")
    sampling_temperature: float = option(1.0, "with --sample: softmax temperature")
    seed: int = option(0, "with --sample: random seed")
    batch_size: int = option(8, "prompts generated together")
    device: str | None = option(
        None, "cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when available, else cpu)"
    )
    dtype: str = option(
        "float32",
        "the experts' weights: float32 | bfloat16 | float16 (or fp32 | bf16 | fp16; bfloat16 halves GPU memory)",
        type=dtype_arg,
    )

    def __post_init__(self):
        if self.prompt is None and self.input is None:
            raise UsageError("give --prompt TEXT or --input prompts.jsonl")
        if self.batch_size <= 0:
            raise UsageError("--batch-size must be positive")
        if self.ensemble_type == "lang" and not self.path_to_clusterer:
            raise UsageError("--ensemble-type lang needs --path-to-clusterer (a typological clusterer)")
        if self.lang is not None and self.ensemble_type != "lang":
            raise UsageError("--lang routes a prompt by its language: it goes with --ensemble-type lang")


@dataclass(kw_only=True)
class MergeConfig:
    """`merge_experts`' settings: each field is its flag; the script's parser is generated from this class."""

    experts_dir: str = option(help="directory holding the expert run dirs (expert.json)")
    experts: list[int] | None = option(
        None,
        "cluster ids of the experts to merge, e.g. 0,2; unset: every expert found",
        type=_cluster_ids,
        metavar="IDS",
        render=lambda v: [",".join(map(str, v))],
    )
    weights: str = option(
        "uniform",
        "uniform | posterior | comma-separated weights, one per selected expert in "
        "cluster order, non-negative and summing to 1",
    )
    data_dir: str | None = option(
        None, "corpus root whose held-out documents give --weights posterior", aliases=("--path-to-data",)
    )
    data_subset: str = option("valid", "split for --weights posterior: valid or valid/<subset>")
    max_docs: int | None = option(None, "--weights posterior: use at most this many documents of the split")
    job_dir: str | None = option(
        None,
        "--weights posterior: cache the tokenized documents and per-expert scores here (an eval_ensemble job "
        "dir of the same split is reused); default: a temporary dir",
    )
    batch_tokens: int = option(8192, "padded tokens per forward pass (posterior)")
    device: str | None = option(
        None, "scoring device: cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when available, else cpu)"
    )
    output_dir: str = option(help="where the merged model goes: consolidated.pt, hf/, expert.json (replaced whole)")

    def __post_init__(self):
        self.data_subset = self.data_subset.strip("/")
        if self.batch_tokens <= 0:
            raise UsageError("--batch-tokens must be positive")
        if self.data_dir is not None and self.weights.strip() != "posterior":
            raise UsageError("--data-dir is only read by --weights posterior")
