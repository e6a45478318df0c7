"""What `train_experts` is asked (`TrainExpertsRequest`, one field per flag) and what it will do
(`plan_experts` -> `TrainExpertsPlan`: one TrainConfig per expert, everything resolved and validated before
anything is binarized or queued; `describe_plan` says it in words). Running a plan: `xlbtm.train.experts`.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlbtm.cli import get_logger
from xlbtm.data.dataset import stream_samples
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.binarized import MANIFEST, read_binarized_manifest
from xlbtm.formats.checkpoints import latest_checkpoint
from xlbtm.formats.clusters import read_manifest
from xlbtm.formats.expert import EXPERT_JSON, read_expert_info
from xlbtm.formats.layout import RunLayout
from xlbtm.formats.pairs import MANIFEST as PAIRS_MANIFEST
from xlbtm.formats.pairs import pairs_dir_for, read_pairs_manifest
from xlbtm.formats.seed import seed_args
from xlbtm.io import read_json, refuse_overlap
from xlbtm.launch.site import resolve_site
from xlbtm.models import PRESETS, ModelArgs
from xlbtm.runtime import requested_device, resolve_device
from xlbtm.tokenizer import load_tokenizer
from xlbtm.train.config import (
    OBJECTIVES,
    Objective,
    TrainConfig,
    TrainExpertsRequest,
    TrainingSettings,
    check_model_fits,
    uses_monolingual,
    uses_pairs,
)
from xlbtm.train.expert_dir import RunLock

log = get_logger("train")


@dataclass
class ExpertPlan:
    cluster: int
    run_dir: Path
    cfg: TrainConfig


@dataclass
class LaunchSpec:
    run: str  # slurm | local | debug
    num_nodes: int
    num_gpus: int  # tasks per node (GPUs, or CPU workers without GPUs)
    device: str  # cuda | cpu
    timeout_min: int = 60 * 24
    mem_gb: float | None = None
    cpus_per_task: int | None = None


def parse_cluster_list(value: str | None, num_clusters: int) -> list[int]:
    """`--train-cluster 1,3,5` (also ranges `0-3`); None = all clusters."""
    if value is None:
        return list(range(num_clusters))
    if not str(value).strip(" ,"):  # an unset shell variable, say: training every expert is not what was meant
        raise UsageError("--train-cluster is empty; leave the flag out to train every cluster")
    out: list[int] = []
    for part in str(value).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise UsageError(
                f"--train-cluster: expected comma-separated cluster ids like 1,3,5, got {value!r}"
            ) from None
    bad = [k for k in out if not 0 <= k < num_clusters]
    if bad:
        raise UsageError(f"--train-cluster: cluster(s) {bad} out of range for --num-clusters {num_clusters}")
    return sorted(set(out))


def resolve_data_dir(path_to_data: str, data_name: str | None) -> Path:
    """c-BTM passes a data root plus a dataset name; accept `<root>/<name>` or `<root>` itself."""
    root = Path(path_to_data)
    for cand in ([root / data_name] if data_name else []) + [root]:
        if (cand / "train").is_dir():
            return cand
    raise InputError("no 'train' split found (expected <path-to-data>[/<data-name>]/train/...)", root)


def resolve_clusters_dir(path: str, num_clusters: int, data_name: str | None) -> Path:
    """The dir holding manifest.json; also accept c-BTM's `<clusters>/<data-name>/<K>` nesting."""
    root = Path(path)
    cands = [root, root / str(num_clusters)]
    if data_name:
        cands += [root / data_name / str(num_clusters), root / data_name]
    for cand in cands:
        if (cand / "manifest.json").is_file() or (cand / "train").is_dir():
            return cand
    raise InputError(
        "no cluster files found (expected manifest.json; run xlbtm.scripts.train_clusterer and "
        "then xlbtm.scripts.cluster first)",
        root,
    )


def detect_device(run: str, requested: str = "auto") -> str:
    """cuda | cpu (`xlbtm.runtime`'s policy): --device, else $XLBTM_DEVICE, else local runs use cuda when
    this machine sees a GPU, and SLURM runs use cuda when some partition offers GPU gres (login nodes often
    have no GPU themselves, so a --device cuda for SLURM is not checked here)."""
    if run == "slurm":
        asked = requested_device(requested)
        if asked is not None:
            return asked.split(":")[0]
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20).stdout
            return "cuda" if "gpu" in out else "cpu"
        except (OSError, subprocess.TimeoutExpired):
            return "cuda"
    return resolve_device(requested).split(":")[0]  # each rank takes the GPU of its local rank


def experts_layout(experts_dir: str | None, serialization_dir: str | os.PathLike, num_clusters: int) -> RunLayout:
    """Where the experts go: `--experts-dir` (add_experts: the grown ensemble's dir), else
    `<serialization_dir>/<K>_clusters`."""
    return RunLayout(Path(experts_dir)) if experts_dir else RunLayout.of(serialization_dir, num_clusters)


def local_slots(spec: LaunchSpec) -> list[tuple[int, ...] | None]:
    """How many experts a `--run local` machine trains at once, and on which GPUs.

    submitit's LocalExecutor gives every job GPUs 0..G-1, so concurrent experts would share GPUs; instead
    each concurrent job gets its own `visible_gpus`, and experts beyond the free slots wait for the next
    wave. On CPU, one expert per G cores at a time."""
    if spec.device == "cuda":
        import torch

        n = torch.cuda.device_count()
        if n < spec.num_gpus:
            raise UsageError(f"--num-gpus {spec.num_gpus} but this machine has {n} GPU(s)")
        return [tuple(range(i * spec.num_gpus, (i + 1) * spec.num_gpus)) for i in range(n // spec.num_gpus)]
    return [None] * max(1, (os.cpu_count() or 1) // spec.num_gpus)


@dataclass
class TrainExpertsPlan:
    """A validated request with everything resolved: one `ExpertPlan` (TrainConfig) per cluster to train."""

    request: TrainExpertsRequest
    clusters: list[int]
    data_dir: Path | None  # None: --objective tlm (parallel data only)
    clusters_dir: Path | None  # None: dense baseline (no filtering)
    clusterer_fp: str | None
    tokenizer: Any  # xlbtm.tokenizer.Tokenizer
    objective: Objective
    run_name: str
    bin_dir: Path
    device: str  # cuda | cpu
    site: Any  # SiteConfig
    spec: LaunchSpec
    experts: list[ExpertPlan] = field(default_factory=list)
    slots: list[tuple[int, ...] | None] | None = None  # --run local: one entry (GPU set) per concurrent expert
    allocation: list[str] | None = None  # --step-allocation proportional, once applied: its description
    parallel_dir: Path | None = None  # --parallel-data (tlm, mlm+tlm)
    parallel_clusters_dir: Path | None = None  # its cluster files; None: every expert reads all its pairs

    @property
    def world(self) -> int:
        return self.spec.num_nodes * self.spec.num_gpus

    @property
    def dp(self) -> int:
        return self.world // self.request.tensor_parallel_size

    @property
    def global_batch_size(self) -> int:
        r = self.request
        return r.batch_size * self.dp * r.update_freq

    @property
    def job_dir(self) -> Path:
        return RunLayout(self.experts_dir).logs_dir

    @property
    def experts_dir(self) -> Path:
        r = self.request
        return experts_layout(r.experts_dir, r.serialization_dir, r.num_clusters).root


def resolve_tokenizer(seed_model: str, tokenizer: str | None = None) -> str:
    """`--tokenizer`, else the seed's own (an HF dir, or the dir next to a .pt that carries one)."""
    if tokenizer:
        return tokenizer
    seed = Path(seed_model)
    for cand in ([seed] if seed.is_dir() else []) + ([seed.parent] if seed.is_file() else []):
        if any((cand / f).is_file() for f in ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json")):
            return str(cand)
    raise UsageError(f"--tokenizer is required: the seed model does not carry a tokenizer ({seed_model})")


def default_objective(seed_model: str, model_size: str | None = None) -> Objective:
    """mlm for XLM-R seeds (preset or HF config), clm otherwise."""
    for name in (seed_model, model_size):
        if name in PRESETS:
            return "mlm" if PRESETS[name]["arch"] == "xlmr" else "clm"
    cfg = Path(seed_model) / "config.json"
    if cfg.is_file():
        return "mlm" if "roberta" in str(read_json(cfg).get("model_type", "")) else "clm"
    return "clm"


def plan_experts(req: TrainExpertsRequest) -> TrainExpertsPlan:
    """Validate the flag combination and resolve everything; reads inputs, writes nothing."""
    K = req.num_clusters
    if K < 1:
        raise UsageError("--num-clusters must be >= 1")
    for flag, value in (
        ("--batch-size", req.batch_size),
        ("--update-freq", req.update_freq),
        ("--tokens-per-sample", req.tokens_per_sample),
        ("--max-steps", req.max_steps),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    for flag, opt in (("--batch-tokens-valid", req.batch_tokens_valid), ("--max-valid-samples", req.max_valid_samples)):
        if opt is not None and opt < 1:
            raise UsageError(f"{flag} must be >= 1, got {opt}")
    if not 0 <= req.learning_rate < float("inf"):  # 0 is allowed: a run that only evaluates its seed
        raise UsageError(f"--learning-rate must be finite and >= 0, got {req.learning_rate}")
    if req.step_allocation not in STEP_ALLOCATIONS:
        raise UsageError(f"--step-allocation must be one of {', '.join(STEP_ALLOCATIONS)}")
    if req.num_nodes < 1 or req.num_gpus < 1:
        raise UsageError("--num-nodes and --num-gpus must be >= 1")
    world = req.num_nodes * req.num_gpus
    if world % req.tensor_parallel_size:
        raise UsageError(
            f"--tensor-parallel-size {req.tensor_parallel_size} must divide --num-nodes x --num-gpus ({world})"
        )
    if req.tokens_per_sample % req.tensor_parallel_size:
        raise UsageError(
            f"--tokens-per-sample {req.tokens_per_sample} must be divisible by --tensor-parallel-size "
            f"{req.tensor_parallel_size} (sequence parallelism splits every sample evenly)"
        )
    clusters = parse_cluster_list(req.train_cluster, K)
    objective = req.objective or default_objective(req.seed_model, req.model_size)
    data_dir, parallel_dir = resolve_objective_data(req, objective)
    clusters_dir, clusterer_fp = None, None
    if data_dir is not None and (K > 1 or req.path_to_clusters_dir):
        if not req.path_to_clusters_dir:
            raise UsageError("--num-clusters > 1 needs --path-to-clusters-dir")
        if K > 1:
            clusters_dir, clusterer_fp = read_clusters_dir(
                req.path_to_clusters_dir, K, req.data_name, "--path-to-clusters-dir", parallel=False
            )
    elif data_dir is None and req.path_to_clusters_dir:
        raise UsageError(
            "--objective tlm reads no monolingual cluster files: leave out --path-to-clusters-dir "
            "(the pairs' own are --path-to-parallel-clusters-dir)"
        )
    parallel_clusters_dir = None
    if req.path_to_parallel_clusters_dir:
        if parallel_dir is None or K == 1:
            raise UsageError(
                "--path-to-parallel-clusters-dir routes the pairs of --parallel-data to experts: it "
                "needs --objective tlm or mlm+tlm and --num-clusters > 1"
            )
        parallel_clusters_dir, pair_fp = read_clusters_dir(
            req.path_to_parallel_clusters_dir, K, None, "--path-to-parallel-clusters-dir", parallel=True
        )
        if clusterer_fp is not None and pair_fp != clusterer_fp:
            raise UsageError(
                f"--path-to-parallel-clusters-dir was assigned by clusterer {pair_fp}, "
                f"--path-to-clusters-dir by {clusterer_fp}: assign both with the same clusterer, so "
                "expert k trains on cluster k of each"
            )
        clusterer_fp = pair_fp
    # a cluster without documents is known from the cluster manifests already: refused before anything is
    # binarized or queued (--dry-run too); check_training_data repeats it on the binarized counts
    empty = {
        k: f"0 {what}"
        for d, what in ((clusters_dir, "documents"), (parallel_clusters_dir, "translation pairs"))
        if d is not None
        for k in clusters_without_documents(d, req.train_subset, clusters)
    }
    if empty:
        raise no_training_data(
            empty, clusters, req.train_subset, [d for d in (clusters_dir, parallel_clusters_dir) if d]
        )

    tok = load_tokenizer(resolve_tokenizer(req.seed_model, req.tokenizer))
    run_name = req.run_name or req.data_name or "run"
    bin_dir = (
        Path(req.binarized_dir)
        if req.binarized_dir
        else RunLayout.of(req.serialization_dir, K).binarized_dir(req.data_name, tok.fingerprint)
    )
    device = detect_device(req.run, req.device)
    if req.site is not None:
        site = req.site
    else:
        site = resolve_site()
    spec = LaunchSpec(run=req.run, num_nodes=req.num_nodes, num_gpus=req.num_gpus, device=device)

    # the training settings pass through by name (none copied by hand); the rest is resolved here
    shared = {f.name: getattr(req, f.name) for f in dataclasses.fields(TrainingSettings)}
    experts = []
    layout = experts_layout(req.experts_dir, req.serialization_dir, K)
    for k in clusters:
        run_dir = layout.run_dir(run_name, k)
        cfg = TrainConfig(
            **shared,
            run_dir=str(run_dir.resolve()),
            data_dir=str(bin_dir.resolve()),
            seed_model=req.seed_model,
            model_size=req.model_size,
            max_steps=req.max_steps,
            cluster=k,
            num_clusters=K,
            clusterer_fingerprint=clusterer_fp,
            run_name=run_name,
            tokenizer=str(Path(tok.path).resolve()),
            objective=objective,
            device=device,
            progress_bar=False,
            init=req.init,
            pairs_dir=None if parallel_dir is None else str(pairs_dir_for(bin_dir).resolve()),
            source_data=None if data_dir is None else str(Path(data_dir).resolve()),
            source_pairs=None if parallel_dir is None else str(Path(parallel_dir).resolve()),
        )
        experts.append(ExpertPlan(k, run_dir, cfg))

    # what training writes (each expert's run dir, the binarized data) must not touch what it reads
    refuse_overlap(
        {
            "--binarized-dir" if req.binarized_dir else f"{req.output_flag} (binarized data)": bin_dir,
            **{f"{req.output_flag} (cluster {p.cluster})": p.run_dir for p in experts},
        },
        {
            "--path-to-data": data_dir,
            "--parallel-data": parallel_dir,
            "--path-to-clusters-dir": clusters_dir,
            "--path-to-parallel-clusters-dir": parallel_clusters_dir,
            "--seed-model": req.seed_model,
            "--tokenizer": tok.path,
        },
    )
    check_experts_startable(req, tok, objective, experts)
    plan = TrainExpertsPlan(
        request=req,
        clusters=clusters,
        data_dir=data_dir,
        clusters_dir=clusters_dir,
        clusterer_fp=clusterer_fp,
        tokenizer=tok,
        objective=objective,
        run_name=run_name,
        bin_dir=bin_dir,
        device=device,
        site=site,
        spec=spec,
        experts=experts,
        slots=local_slots(spec) if req.run == "local" else None,
        parallel_dir=parallel_dir,
        parallel_clusters_dir=parallel_clusters_dir,
    )
    plan.allocation = apply_step_allocation(plan)  # None until the data is binarized (run_plan applies it then)
    return plan


def read_clusters_dir(path: str, K: int, data_name: str | None, flag: str, *, parallel: bool) -> tuple[Path, str]:
    """(the cluster files' dir, their clusterer's fingerprint), checked: K clusters, and made from translation
    pairs (`cluster --parallel-side`) exactly when `parallel`."""
    d = resolve_clusters_dir(path, K, data_name)
    man = read_manifest(d)
    if int(man["num_clusters"]) != K:
        raise UsageError(f"--num-clusters {K} but {flag} {d}/manifest.json has {man['num_clusters']}")
    side = man.get("parallel_side")
    if parallel and not side:
        raise UsageError(
            f"{flag} {d} holds cluster files of monolingual documents; assign the parallel data with "
            "`python -m xlbtm.scripts.cluster --parallel-side tgt ...`"
        )
    if side and not parallel:
        raise UsageError(
            f"{flag} {d} holds cluster files of translation pairs (--parallel-side {side}); give them "
            "as --path-to-parallel-clusters-dir"
        )
    return d, man["fingerprint"]


def resolve_objective_data(req: TrainExpertsRequest, objective: str) -> tuple[Path | None, Path | None]:
    """(monolingual corpus, parallel data) the objective trains on, each None when it reads none: clm / mlm
    read --path-to-data, tlm --parallel-data only, mlm+tlm both. A flag the objective would not read is an
    error, not silently ignored."""
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not 0.0 <= req.tlm_ratio <= 1.0:
        raise UsageError(f"--tlm-ratio must be in [0, 1], got {req.tlm_ratio}")
    data_dir = parallel_dir = None
    if uses_monolingual(objective):
        if not req.path_to_data:
            raise UsageError(f"--path-to-data is required with --objective {objective}")
        data_dir = resolve_data_dir(req.path_to_data, req.data_name)
    elif req.path_to_data:
        raise UsageError(
            "--objective tlm trains on --parallel-data only; leave out --path-to-data, or use "
            "--objective mlm+tlm to train on both"
        )
    if uses_pairs(objective):
        if not req.parallel_data:
            raise UsageError(
                f"--objective {objective} needs --parallel-data (translation pairs: "
                '<dir>/train/<shard>/*.jsonl of {"src", "tgt", "src_lang", "tgt_lang"})'
            )
        parallel_dir = Path(req.parallel_data)
        if not (parallel_dir / "train").is_dir():
            raise InputError(
                "no 'train' split found (expected --parallel-data <dir>/train/<shard>/*.jsonl)", parallel_dir
            )
        if objective == "tlm" and req.num_clusters > 1 and not req.path_to_parallel_clusters_dir:
            raise UsageError(
                "--objective tlm with --num-clusters > 1 needs --path-to-parallel-clusters-dir (cluster "
                "files of the pairs, from cluster --parallel-side tgt): else every expert would train "
                "on the same pairs"
            )
    elif req.parallel_data:
        raise UsageError(f"--parallel-data is only read by --objective tlm or mlm+tlm, not {objective}")
    return data_dir, parallel_dir


def check_experts_startable(req: TrainExpertsRequest, tok, objective: str, experts: list[ExpertPlan]) -> None:
    """What a job would otherwise find out only after queueing and binarizing: a run dir another trainer
    holds, a resume with another tokenizer, a seed that does not load or does not fit the objective or
    --tokens-per-sample. (`--dry-run` plans too, so it catches the same.)"""
    fresh = False
    for p in experts:
        if not p.run_dir.is_dir():
            fresh = True
            continue
        held = RunLock(p.run_dir).held_by_other()
        if held:
            raise UsageError(
                f"cluster {p.cluster}: {held}; wait for it to finish (or stop it), or train into "
                f"another {req.output_flag}"
            )
        if latest_checkpoint(p.run_dir) is None:
            fresh = True
            continue
        info = read_expert_info(p.run_dir)  # a resume: the run's own model and tokenizer
        if info.tokenizer_fingerprint != tok.fingerprint:
            raise UsageError(
                f"cluster {p.cluster}: {p.run_dir / EXPERT_JSON} was started with the tokenizer "
                f"{info.tokenizer}, not {tok.path}; resume with that {req.tokenizer_flag} or train into "
                f"another {req.output_flag}"
            )
        refuse_another_experiment(req, p, info)
        args = ModelArgs.from_dict(info.model_args)
        check_model_fits(args.arch, args.max_positions, objective, req.tokens_per_sample, str(p.run_dir))
    if fresh:
        if req.seed_model_args is not None:  # a seed still to be written (add_experts' parent weights)
            args = ModelArgs.from_dict(req.seed_model_args)
        else:
            args = seed_args(req.seed_model, req.model_size, tok.vocab_size)
        check_model_fits(args.arch, args.max_positions, objective, req.tokens_per_sample, req.seed_model)


def _same_seed(a: str | None, b: str | None) -> bool:
    """A preset name, or a path (compared resolved: `./seed` and `/abs/seed` are one seed)."""
    if a == b:
        return True
    if a and b and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


def refuse_another_experiment(req: TrainExpertsRequest, p: ExpertPlan, info) -> None:
    """A run dir with checkpoints is resumed: refuse when this command describes another expert than the one
    it holds (another corpus, clusterer, seed or objective). Resuming would train it on the new inputs from
    where the old ones left it (0 steps when it had finished), and every later report would credit the new
    inputs with a model trained on the old ones. Settings that only change how training goes on (--max-steps,
    the learning rate) stay free: extending a run is a resume. Fields an older expert.json lacks are skipped."""
    was = info.data.get("config") or {}
    recorded = {
        "clusterer": (info.clusterer_fingerprint, True),
        "seed": (info.seed_model, True),
        # written into the config by this xlbtm: an older expert.json without the key is not compared
        "objective": (was.get("objective"), "objective" in was),
        "corpus": (was.get("source_data"), "source_data" in was),
        "translation pairs": (was.get("source_pairs"), "source_pairs" in was),
    }
    now = {
        "clusterer": ("--path-to-clusters-dir", p.cfg.clusterer_fingerprint),
        "seed": ("--seed-model", p.cfg.seed_model),
        "objective": ("--objective", p.cfg.objective),
        "corpus": ("--path-to-data", p.cfg.source_data),
        "translation pairs": ("--parallel-data", p.cfg.source_pairs),
    }
    for what, (old, known) in recorded.items():
        flag, new = now[what]
        if not known or (_same_seed(old, new) if what == "seed" else old == new):
            continue
        width = 12 if what == "clusterer" else None  # a fingerprint: its head is enough to tell them apart
        before, after = ("not given" if v is None else str(v)[:width] for v in (old, new))
        raise UsageError(
            f"cluster {p.cluster}: {p.run_dir} holds an expert trained with another {what} ({flag} was "
            f"{before}, now {after}); resuming would present it as trained on the new one: rerun with "
            f"the same {flag}, or train into another {req.output_flag}"
        )


def clusters_without_documents(clusters_dir: Path, split: str, clusters: list[int]) -> list[int]:
    """Which of `clusters` the cluster manifest counts no documents (or pairs) of `split` in (none when it
    does not count them: c-BTM's manifests)."""
    entry = read_manifest(clusters_dir).get("splits", {})
    docs = entry.get(split, {}).get("documents") if isinstance(entry, dict) else None
    if not isinstance(docs, list):
        return []
    return [k for k in clusters if k < len(docs) and docs[k] == 0]


def check_training_data(plan: TrainExpertsPlan) -> None:
    """Right after binarizing, before the step allocation or any job: every expert to train has at least one
    training sample in its cluster. A cluster without (typological K=3 on a corpus without the third
    group's languages, or a handful of short documents) would get "1 step (0.0% of the tokens)" and its job
    would fail after the others trained; the user is told instead which cluster, how much it holds, and the
    flags that leave it out (`--train-cluster` without it: an explicit selection is honoured, and skips it)."""
    r, K = plan.request, plan.request.num_clusters
    short: dict[int, str] = {}
    if plan.data_dir is not None and (plan.bin_dir / MANIFEST).is_file():
        split = read_binarized_manifest(plan.bin_dir)["splits"].get(r.train_subset, {})
        docs, tokens = split.get("documents"), split.get("tokens")
        if isinstance(docs, list) and isinstance(tokens, list) and len(tokens) == K:
            stream = "clm" if plan.objective == "clm" else "mlm"  # mlm+tlm samples its MLM stream
            for p in plan.experts:
                n, t = int(docs[p.cluster]), int(tokens[p.cluster])
                if stream_samples(stream, t, r.tokens_per_sample) == 0:
                    short[p.cluster] = f"{n:,} documents" + (
                        f" ({t:,} tokens, less than one sample of --tokens-per-sample {r.tokens_per_sample})"
                        if n
                        else ""
                    )
    if plan.parallel_clusters_dir is not None and (pairs_dir_for(plan.bin_dir) / PAIRS_MANIFEST).is_file():
        pairs = read_pairs_manifest(pairs_dir_for(plan.bin_dir))["splits"].get(r.train_subset, {}).get("pairs")
        if isinstance(pairs, list) and len(pairs) == K:
            for p in plan.experts:
                if int(pairs[p.cluster]) == 0 and p.cluster not in short:
                    short[p.cluster] = "0 translation pairs"
    if short:
        raise no_training_data(short, plan.clusters, r.train_subset, [plan.bin_dir])


def no_training_data(short: dict[int, str], planned: list[int], split: str, where: list[Path]) -> UsageError:
    """One line: which clusters hold (almost) nothing to train on, how much, and what to do."""
    ks = sorted(short)
    what = "; ".join(f"cluster {k}: {short[k]}" for k in ks)
    subject = f"cluster {ks[0]} has" if len(ks) == 1 else f"clusters {', '.join(map(str, ks))} have"
    others = [k for k in planned if k not in short]
    todo = (
        f"train the others with --train-cluster {','.join(map(str, others))}, then leave "
        f"{'it' if len(ks) == 1 else 'them'} out of the ensemble with eval_ensemble --exclude-experts "
        f"{','.join(map(str, ks))}"
        if others
        else "no cluster to train has data: check the corpus, --train-subset and the cluster files"
    )
    return UsageError(
        f"{subject} no training data in split '{split}' ({what}; {', '.join(map(str, where))}): nothing was "
        f"trained; {todo}"
    )


STEP_ALLOCATIONS = ("equal", "proportional")


def allocate_steps(total_steps: int, weights: list[int]) -> list[int]:
    """Split `total_steps` over clusters in proportion to `weights` (training tokens), each >= 1, summing
    exactly to the total (largest remainders get the leftover steps; ties go to the lower cluster id)."""
    K = len(weights)
    if total_steps < K:
        raise UsageError(f"--step-allocation proportional needs at least one step per expert ({K})")
    if sum(weights) <= 0:
        return [total_steps // K + (1 if k < total_steps % K else 0) for k in range(K)]
    spare = total_steps - K  # one step each first, the rest by share
    exact = [spare * w / sum(weights) for w in weights]
    steps = [1 + int(x) for x in exact]
    order = sorted(range(K), key=lambda k: (-(exact[k] - int(exact[k])), k))
    for k in order[: total_steps - sum(steps)]:
        steps[k] += 1
    return steps


def apply_step_allocation(plan: TrainExpertsPlan) -> list[str] | None:
    """`--step-allocation proportional`: give each expert its share of K x --max-steps by the training tokens
    of its cluster (from the binarized manifests), in place. Returns the lines describing it, or None when
    the allocation is equal (or the data is not binarized yet)."""
    r = plan.request
    if r.step_allocation == "equal" or r.num_clusters == 1:
        return None
    tokens = cluster_training_tokens(plan)
    if not tokens or len(tokens) != r.num_clusters:
        return None
    steps = allocate_steps(r.num_clusters * r.max_steps, [int(t) for t in tokens])
    total = sum(tokens)
    lines = [
        f"step allocation: proportional to training tokens, {sum(steps)} steps in all (= K x --max-steps {r.max_steps})"
    ]
    for p in plan.experts:
        p.cfg.max_steps = steps[p.cluster]
        # the same schedule shape: warm-up stays the same fraction of the expert's own steps
        p.cfg.warmup_updates = int(r.warmup_updates * steps[p.cluster] / max(r.max_steps, 1))
        lines.append(
            f"  cluster {p.cluster}: {steps[p.cluster]} steps ({100 * tokens[p.cluster] / max(total, 1):.1f}% "
            f"of the tokens)"
        )
    return lines


def cluster_training_tokens(plan: TrainExpertsPlan) -> list[int] | None:
    """Training tokens per cluster, from the binarized manifests (None until binarized): the monolingual
    stream's, plus both sides of each cluster's pairs when the pairs are clustered."""
    r, K = plan.request, plan.request.num_clusters
    parts = []
    if plan.data_dir is not None:
        if not (plan.bin_dir / MANIFEST).is_file():
            return None
        parts.append(read_binarized_manifest(plan.bin_dir)["splits"].get(r.train_subset, {}).get("tokens"))
    if plan.parallel_clusters_dir is not None:
        pdir = pairs_dir_for(plan.bin_dir)
        if not (pdir / PAIRS_MANIFEST).is_file():
            return None
        sides = read_pairs_manifest(pdir)["splits"].get(r.train_subset, {}).get("tokens", {})
        parts += list(sides.values())
    if not parts or any(not isinstance(t, list) or len(t) != K for t in parts):
        return None
    return [sum(int(t[k]) for t in parts) for k in range(K)]


def describe_plan(plan: TrainExpertsPlan) -> list[str]:
    """The plan as printed by train_experts (and --dry-run): data, resources, launch, one line per expert."""
    r, K = plan.request, plan.request.num_clusters
    lines = [
        f"plan: {len(plan.experts)} expert(s) of K={K} ({plan.objective}, seed {r.seed_model}), "
        f"clusters {plan.clusters}",
        f"  data: {plan.data_dir or '(none: parallel data only)'}  "
        f"clusters: {plan.clusters_dir or '(dense baseline: no filtering)'}",
        f"  binarized: {plan.bin_dir}  tokenizer: {plan.tokenizer.path}",
        f"  per expert: {r.num_nodes} node(s) x {r.num_gpus} {'GPU' if plan.device == 'cuda' else 'CPU worker'}(s) "
        f"= {plan.world} tasks, dp={plan.dp} tp={r.tensor_parallel_size}; {plan.global_batch_size} samples x "
        f"{r.tokens_per_sample} tokens per step = {plan.global_batch_size * r.tokens_per_sample} tokens/step, "
        f"{r.max_steps} steps"
        + (
            ""
            if r.step_allocation == "equal" or K == 1
            else f" on average ({r.step_allocation} allocation of {K * r.max_steps})"
        ),
        f"  launch: --run {r.run}, device {plan.device}; site: {plan.site.describe()}",
    ]
    if plan.parallel_dir is not None:
        routing = (
            f"each expert reads its cluster's pairs, {plan.parallel_clusters_dir}"
            if plan.parallel_clusters_dir
            else "every expert reads all pairs"
        )
        lines.append(
            f"  parallel data: {plan.parallel_dir} ({routing}"
            + (f"; {r.tlm_ratio:g} of the samples TLM)" if plan.objective == "mlm+tlm" else ")")
        )
    if plan.slots is not None:
        slots = plan.slots
        lines.append(
            f"  local: {len(slots)} expert(s) at a time"
            + (f" on GPUs {', '.join(map(str, slots))}" if slots[0] is not None else f" ({os.cpu_count()} CPU cores)")
        )
    if plan.allocation:
        lines += plan.allocation
    elif r.step_allocation != "equal" and K > 1:
        lines.append(f"step allocation: {r.step_allocation} (computed from the binarized token counts)")
    for p in plan.experts:
        ck = latest_checkpoint(p.run_dir) if p.run_dir.exists() else None
        lines.append(f"  cluster {p.cluster}: {p.run_dir}" + (f" (resumes from {ck.name})" if ck else ""))
    return lines
