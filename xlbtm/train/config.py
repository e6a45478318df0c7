"""The configuration of ONE expert's training run (what `train_experts` builds per cluster)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from xlbtm.config import config_from_args, option
from xlbtm.errors import UsageError
from xlbtm.launch.executor import RunMode
from xlbtm.launch.site import site_from_args
from xlbtm.runtime import Precision

# validation runs without gradients: a micro-batch this many times training's fits the memory a training step
# needed for its activations, and fewer, larger forwards are what makes eval_ensemble fast
VALID_BATCH_FACTOR = 4


def setting(
    default,
    group: str,
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    type=None,
    choices_help: dict[str, str] | None = None,
):
    """A field of TrainingSettings that is also a `train_experts` flag (`xlbtm.config.option` in a help
    `group`): `--<name>` plus `flags` (aliases), parsed with `type` (default: from the field's type; store_true
    for booleans; choices from a Literal type)."""
    return option(default, help, group=group, aliases=flags, type=type, choices_help=choices_help)


def _betas(text: str) -> tuple[float, float]:
    """`0.9,0.98` or metaseq's `(0.9, 0.98)`."""
    try:
        b = tuple(float(x) for x in text.strip().strip("()").split(","))
    except ValueError:
        b = ()
    if len(b) != 2 or not all(0 <= x < 1 for x in b):
        raise argparse.ArgumentTypeError(f"expected two numbers in [0, 1) like 0.9,0.98, got {text!r}")
    return b


OPT, CKPT, RES, DATA = "optimization", "checkpoints and logging", "resources", "what to train"


@dataclass(kw_only=True)
class TrainingSettings:
    """How every expert of a run is trained: the settings `train_experts` takes as flags of the same names
    (`--learning-rate` -> learning_rate), generated from these fields (`xlbtm.config.add_config_args`), with
    these defaults. Both `TrainConfig` (one expert's run, stored in its expert.json) and
    `xlbtm.train.plan.TrainExpertsRequest` (the command) extend it, so each setting, its flag and its
    default exist once, and the request hands them to each expert's config by name."""

    train_subset: str = setting("train", DATA, "split to train on")
    valid_subset: str = setting("valid", DATA, "split to validate on")
    tlm_ratio: float = setting(
        0.5,
        DATA,
        "--objective mlm+tlm: the share of samples that are TLM (translation "
        "pairs from --parallel-data); the rest are MLM (--path-to-data)",
    )
    tokens_per_sample: int = setting(2048, OPT, "tokens per training sample (block)")
    batch_size: int = setting(8, OPT, "samples per GPU (data-parallel rank) per micro-step")
    update_freq: int = setting(1, OPT, "gradient accumulation micro-steps")
    learning_rate: float = setting(2e-4, OPT, "peak learning rate", flags=("--lr",))
    end_learning_rate: float = setting(0.0, OPT, "learning rate at the last step")
    warmup_updates: int = setting(0, OPT, "linear warmup steps")
    power: float = setting(1.0, OPT, "exponent of the polynomial LR decay after warmup (metaseq's; 1 = linear)")
    weight_decay: float = setting(0.1, OPT, "AdamW weight decay (not on biases and norms)")
    adam_betas: tuple[float, float] = setting((0.9, 0.95), OPT, "AdamW betas, e.g. 0.9,0.98", type=_betas)
    adam_eps: float = setting(1e-6, OPT, "AdamW epsilon")
    clip_norm: float = setting(1.0, OPT, "gradient-norm clipping (0: off)")
    dropout: float | None = setting(None, OPT, "override the seed's dropout", type=float)
    seed: int = setting(1, OPT, "seed of the data order, dropout and random inits")
    tensor_parallel_size: int = setting(
        1,
        RES,
        "tensor-parallel degree (divides nodes x gpus); the rest is FSDP data parallel",
        flags=("--model-parallel",),
    )
    activation_checkpointing: bool = setting(False, OPT, "recompute each block in backward (memory for time)")
    compile: bool = setting(False, OPT, "torch.compile each block")
    precision: Precision | None = setting(
        None,
        OPT,
        "fp32, or bf16-mixed: bf16 compute with fp32 master weights, optimizer state and gradient "
        "reductions (FSDP2 mixed precision, on any device). Default: bf16-mixed on GPUs, fp32 on CPUs",
    )
    loss_chunk_mib: int | None = setting(
        None,
        RES,
        "MiB of fp32 logits per chunk of the loss (per tensor-parallel rank; the loss never holds a "
        "batch's logits, only one chunk's). Default: twice the fp32 size of the output weight [V, d_model], "
        "between 16 and 256 MiB",
        type=int,
    )
    save_interval_updates: int = setting(1000, CKPT, "checkpoint every N steps (and at the end)")
    validate_interval_updates: int = setting(1000, CKPT, "validate every N steps and at the end (0: never)")
    validate_at_start: bool = setting(
        False,
        CKPT,
        "also validate before the first step: the seed's loss on this cluster, the baseline the expert should "
        "beat (costs one more pass over the valid split; off, as in metaseq)",
    )
    max_valid_samples: int | None = setting(
        None,
        CKPT,
        "cap on validation samples (default: the whole split; --max-valid-steps is c-BTM's name for it)",
        type=int,
        flags=("--max-valid-steps",),
    )
    batch_tokens_valid: int | None = setting(
        None,
        CKPT,
        "tokens per validation forward on each data-parallel rank (no gradients are kept, so it can be larger "
        f"than training's); default {VALID_BATCH_FACTOR}x the training micro-batch (--batch-size x "
        "--tokens-per-sample)",
        type=int,
    )
    keep_checkpoints: int = setting(2, CKPT, "checkpoints kept per expert")
    sync_checkpoints: bool = setting(
        False,
        CKPT,
        "write checkpoints while training waits (default: in the "
        "background, published only once complete, so `latest` never names a "
        "half-written one)",
    )
    log_interval: int = setting(10, CKPT, "log every N steps")
    tensorboard: bool = setting(False, CKPT, "also write TensorBoard events")


@dataclass(kw_only=True)
class TrainConfig(TrainingSettings):
    """ONE expert's run: the shared settings plus what the launcher resolved for this expert."""

    run_dir: str  # <serialization_dir>/<K>_clusters/<run>.cluster<i>
    data_dir: str  # binarized dir (xlbtm.data.binarize layout)
    seed_model: str  # HF dir | metaseq/fairseq .pt | consolidated.pt | preset name
    cluster: int = 0
    num_clusters: int = 1
    clusterer_fingerprint: str | None = None
    run_name: str = "run"
    model_size: str | None = None  # preset naming the architecture when the seed does not
    tokenizer: str | None = None
    objective: Objective = "clm"
    pairs_dir: str | None = None  # binarized parallel data (xlbtm.formats.pairs): tlm, mlm+tlm
    max_steps: int = 1000
    progress_bar: bool | None = None  # None = when stdout is a terminal
    device: str | None = None  # "cuda" | "cpu" | None (cuda when visible)
    init: dict | None = None  # where the seed came from when not the plain seed (add_experts)
    # the corpus and pairs the binarized data was made from (resolved): a resume with other ones is refused
    source_data: str | None = None
    source_pairs: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of to_dict. An unknown key is an error, not silently dropped: it is a setting this
        version would not apply (a typo, or a config from a newer xlbtm)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(
                f"unknown training setting(s) {', '.join(unknown)}: not a field of TrainConfig "
                "(written by another xlbtm version?)"
            )
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])  # JSON gives a list
        return cls(**d)


# training objective -> the architecture it trains. TLM (XLM's translation LM) is an XLM-R objective.
Objective = Literal["clm", "mlm", "tlm", "mlm+tlm"]
OBJECTIVES = {"clm": "xglm", "mlm": "xlmr", "tlm": "xlmr", "mlm+tlm": "xlmr"}
assert tuple(OBJECTIVES) == typing.get_args(Objective)  # one list of objectives: the type's


@dataclass(kw_only=True)
class TrainExpertsRequest(TrainingSettings):
    """Everything `train_experts` is asked to do; one field per flag (same names and defaults as the CLI).
    The training settings (optimization, checkpoints, logging) are TrainingSettings', shared with TrainConfig."""

    # what to train
    seed_model: str = option(
        help="HF dir, metaseq/fairseq .pt, xlbtm consolidated.pt, or a preset name for a random init (e.g. debug)",
        group=DATA,
    )
    model_size: str | None = option(None, "preset naming the architecture when the seed does not", group=DATA)
    tokenizer: str | None = option(
        None, "HF tokenizer dir (default: the seed's own; required with a preset seed)", group=DATA
    )
    objective: Objective | None = option(
        None,
        "what the experts learn; default from the seed's architecture (clm or mlm)",
        group=DATA,
        choices_help={
            "clm": "causal LM (XGLM)",
            "mlm": "masked LM (XLM-R)",
            "tlm": "translation LM on --parallel-data only (XLM-R)",
            "mlm+tlm": "--tlm-ratio of the samples TLM, the rest MLM (XLM-R)",
        },
    )
    path_to_clusters_dir: str | None = option(None, "cluster files + manifest.json (not for K=1)", group=DATA)
    num_clusters: int = option(help="K; 1 = dense baseline (no filtering)", group=DATA)
    train_cluster: str | None = option(None, "only these clusters, e.g. 1,3,5 or 0-3 (default: all)", group=DATA)
    data_name: str | None = option(None, "dataset name (corpus at <path-to-data>/<data-name> if present)", group=DATA)
    path_to_data: str | None = option(
        None,
        "jsonl corpus root (train/<shard>/*.jsonl, valid/...); required unless --objective tlm",
        group=DATA,
        aliases=("--data-dir",),
    )
    parallel_data: str | None = option(
        None,
        "translation pairs for --objective tlm / mlm+tlm: train/<shard>/*.jsonl [, valid/...] of "
        '{"src", "tgt", "src_lang", "tgt_lang"}; with K > 1 routed by --path-to-parallel-clusters-dir, else '
        "every expert reads all pairs",
        group=DATA,
    )
    path_to_parallel_clusters_dir: str | None = option(
        None,
        "cluster files of --parallel-data (cluster --parallel-side tgt, with the clusterer of "
        "--path-to-clusters-dir): each expert trains TLM on its own cluster's pairs (K > 1)",
        group=DATA,
    )
    serialization_dir: str = option(
        help="experts go to <serialization-dir>/<K>_clusters/<run-name>.cluster<i>/",
        group=DATA,
        aliases=("--output-dir",),
    )
    run_name: str | None = option(None, "default: --data-name or 'run'", group=DATA)
    run: RunMode = option(
        help="where the experts train",
        group=DATA,
        choices_help={
            "slurm": "one job per expert",
            "local": "the same jobs as local processes",
            "debug": "in this process",
        },
    )
    binarized_dir: str | None = option(
        None, "binarized data (default <serialization-dir>/<K>_clusters/data-bin/<data-name>.<tok hash>)", group=DATA
    )
    binarize_workers: int = option(
        help="tokenizer processes; with --run slurm binarization is one job with this many CPUs (+1)",
        group=DATA,
        default_factory=lambda: min(8, os.cpu_count() or 1),
    )
    allow_unassigned: bool = option(
        False, "drop documents without a cluster instead of stopping with an error", group=DATA
    )
    # resources
    num_nodes: int = option(1, "nodes per expert job", group=RES)
    num_gpus: int = option(1, "GPUs (tasks) per node; CPU workers without GPUs", group=RES)
    device: Literal["auto", "cuda", "cpu"] = option(
        "auto", "auto: $XLBTM_DEVICE, else cuda when GPUs are visible locally / offered by SLURM partitions", group=RES
    )
    dry_run: bool = option(False, "print the plan and the resources, submit nothing", group=RES)
    no_wait: bool = option(False, "submit and return (slurm); default waits for the jobs", group=RES)
    # optimization
    max_steps: int = option(
        help="optimizer steps per expert (metaseq's --max-update)", group=OPT, aliases=("--max-update",)
    )
    step_allocation: Literal["equal", "proportional"] = option(
        "equal",
        "how the K x --max-steps are shared",
        group=OPT,
        choices_help={
            "equal": "every expert trains --max-steps",
            "proportional": "the K x --max-steps total is shared by each cluster's training tokens (printed in "
            "the plan); the dense baseline is unchanged",
        },
    )
    site: Any = None  # xlbtm.launch.site.SiteConfig; None = file + environment only
    # not flags: set by add_experts
    experts_dir: str | None = None  # run dirs go here instead of <serialization_dir>/<K>_clusters
    init: dict | None = None  # recorded in expert.json: how the seed was chosen
    # the seed's ModelArgs (dict) when the caller knows them before the seed file exists (add_experts: the
    # parent experts' expert.json), so the plan checks the model fits without the file being written first
    seed_model_args: dict | None = None
    # the flag naming where the experts go, as the calling command spells it (add_experts: --experts-dir),
    # so the plan's messages name a flag the user has
    output_flag: str = "--serialization-dir"
    tokenizer_flag: str = "--tokenizer"  # add_experts takes the experts' tokenizer: "tokenizer"

    # what a command that trains experts into an existing ensemble (add_experts) decides itself
    WHAT_TO_TRAIN: ClassVar[frozenset[str]] = frozenset(
        {
            "seed_model",
            "model_size",
            "tokenizer",
            "objective",
            "path_to_clusters_dir",
            "num_clusters",
            "train_cluster",
            "data_name",
            "path_to_data",
            "parallel_data",
            "path_to_parallel_clusters_dir",
            "serialization_dir",
            "run_name",
        }
    )

    @classmethod
    def from_args(cls, args) -> TrainExpertsRequest:
        """From `xlbtm.scripts.train_experts`'s parsed flags (SLURM flags resolved into a SiteConfig)."""
        return config_from_args(cls, args, site=site_from_args(args))


def _comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


ADD = "what to add"


@dataclass(kw_only=True)
class AddExpertsRequest:
    """What `add_experts` (xlbtm.grow) is asked to do: these fields are its own flags; how the new experts train
    is `train`, a TrainExpertsRequest from the training flags it shares with train_experts."""

    experts_dir: str = option(help="the experts to grow: the <K>_clusters dir train_experts wrote", group=ADD)
    path_to_clusterer: str = option(help="the clusterer the experts were trained on", group=ADD)
    langs: list[str] = option(
        help="the new languages, comma-separated (e.g. pl,cs): one expert each",
        group=ADD,
        type=_comma_list,
        render=lambda v: [",".join(v)],
    )
    path_to_data: str = option(
        help="corpus holding the new languages' documents (documents of other languages are ignored)",
        group=ADD,
        aliases=("--data-dir",),
    )
    init: str = option(
        "nearest",
        "where each new expert starts: nearest (the typologically closest expert, "
        "X-ELM), average (posterior-weighted parameter average of all experts, BTM), seed "
        "(the experts' seed) or expert:K",
        group=ADD,
    )
    output_clusterer: str = option(help="directory for the extended clusterer", group=ADD)
    max_docs_per_lang: int = option(
        2000, "documents per new language for a TF-IDF centroid and the --init average posterior", group=ADD
    )
    objective: Objective | None = option(
        None,
        "how the new experts train (default: as the experts were trained); tlm / mlm+tlm read --parallel-data",
        group=ADD,
    )
    parallel_data: str | None = option(
        None,
        "translation pairs (train/<shard>/*.jsonl of {src, tgt, src_lang, tgt_lang}) for tlm / mlm+tlm "
        "experts: a new expert trains on the pairs whose tgt_lang is its language",
        group=ADD,
    )
    train: TrainExpertsRequest  # the training flags (seed, K, dirs: set by add_experts); not a flag itself


def uses_pairs(objective: str) -> bool:
    """The objective reads parallel data (--parallel-data)."""
    return "tlm" in objective


def uses_monolingual(objective: str) -> bool:
    """The objective reads the clustered monolingual corpus (--path-to-data)."""
    return objective != "tlm"


def model_kind(objective: str) -> str:
    """What an expert trained with `objective` is, as expert.json's `objective` records it and the ensemble
    scores it: a causal LM ("clm") or a masked LM ("mlm"; TLM-trained experts are masked LMs too)."""
    return "clm" if objective == "clm" else "mlm"


def check_model_fits(arch: str, max_positions: int, objective: str, tokens_per_sample: int, seed_model: str) -> None:
    """The model can be trained as asked: its architecture matches the objective and a sample fits its
    positions. (Checked by the driver before anything is queued, and again by the trainer.)"""
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    want = OBJECTIVES[objective]
    if arch != want:
        why = " (translation language modeling trains XLM-R experts only)" if uses_pairs(objective) else ""
        raise UsageError(f"--objective {objective} needs a {want} model, but the seed {seed_model} is {arch}{why}")
    if tokens_per_sample > max_positions:
        raise UsageError(
            f"--tokens-per-sample {tokens_per_sample} exceeds the model's max_positions "
            f"({max_positions}); lower it to at most {max_positions}"
        )
