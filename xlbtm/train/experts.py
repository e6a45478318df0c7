"""Plan and launch the training of K experts: one submitit job per expert (an array), N x G tasks each.

`plan_experts` resolves the corpus, clusters, tokenizer and binarized data and returns one `ExpertPlan`
per cluster to train; `launch_experts` binarizes what is missing, then submits and (optionally) waits.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.errors import InputError, UsageError
from xlbtm.train.config import TrainConfig

log = get_logger("train")


@dataclass
class ExpertPlan:
    cluster: int
    run_dir: Path
    cfg: TrainConfig


@dataclass
class LaunchSpec:
    run: str                     # slurm | local | debug
    num_nodes: int
    num_gpus: int                # tasks per node (GPUs, or CPU workers without GPUs)
    device: str                  # cuda | cpu
    timeout_min: int = 60 * 24
    mem_gb: float | None = None
    cpus_per_task: int | None = None


def parse_cluster_list(value: str | None, num_clusters: int) -> list[int]:
    """`--train-cluster 1,3,5` (also ranges `0-3`); None = all clusters."""
    if value is None or value == "":
        return list(range(num_clusters))
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
            raise UsageError(f"--train-cluster: expected comma-separated cluster ids like 1,3,5, got {value!r}") \
                from None
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
    raise InputError("no cluster files found (expected manifest.json; run xlbtm.scripts.cluster and "
                     "xlbtm.scripts.assign first)", root)


def detect_device(run: str, requested: str = "auto") -> str:
    """cuda | cpu. `auto`: local runs use cuda when this machine sees a GPU; SLURM runs use cuda when some
    partition offers GPU gres (login nodes often have no GPU themselves)."""
    if requested in ("cuda", "cpu"):
        return requested
    if run == "slurm":
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20).stdout
            return "cuda" if "gpu" in out else "cpu"
        except (OSError, subprocess.TimeoutExpired):
            return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def experts_root(serialization_dir: str | os.PathLike, num_clusters: int) -> Path:
    return Path(serialization_dir) / f"{num_clusters}_clusters"


def binarized_dir_for(serialization_dir, num_clusters: int, data_name: str | None, tok_fingerprint: str) -> Path:
    return experts_root(serialization_dir, num_clusters) / "data-bin" / f"{data_name or 'data'}.{tok_fingerprint[:12]}"


def binarized_done(out_dir: Path, splits: list[str], tok_fingerprint: str, clusterer_fp: str | None) -> bool:
    """True when every split is already binarized with this tokenizer and clusterer (nothing to do)."""
    import json

    for split in splits:
        done = Path(out_dir) / split / "done.json"
        if not done.is_file():
            return False
        d = json.loads(done.read_text())
        if d.get("tokenizer_fingerprint") != tok_fingerprint or d.get("clusterer_fingerprint") != clusterer_fp:
            return False
    return (Path(out_dir) / "manifest.json").is_file()


def binarize_from_paths(data_dir: str, out_dir: str, tokenizer_path: str, clusters_dir: str | None,
                        num_clusters: int, splits: list[str], workers: int, allow_unassigned: bool) -> dict:
    """Picklable entry point (paths only) so binarization can run as its own job."""
    from xlbtm.cli import setup_logging
    from xlbtm.data.binarize import binarize
    from xlbtm.tokenizer import load_tokenizer

    setup_logging("binarize")
    return binarize(data_dir, out_dir, load_tokenizer(tokenizer_path), splits=splits, clusters_dir=clusters_dir,
                    num_clusters=num_clusters, workers=workers, allow_unassigned=allow_unassigned).manifest


def ensure_binarized(data_dir: Path, out_dir: Path, tokenizer, clusters_dir: Path | None, num_clusters: int,
                     splits: list[str], workers: int, allow_unassigned: bool, *, clusterer_fp: str | None = None,
                     run: str = "local", site=None, job_dir: Path | None = None) -> None:
    """Binarize what is missing: in this process (local/debug), or as one SLURM job with `workers` CPUs
    (`--run slurm`: tokenizing a corpus is no work for a login node)."""
    if binarized_done(out_dir, splits, tokenizer.fingerprint, clusterer_fp):
        log.info(f"binarized data up to date: {out_dir}")
        return
    call = (str(data_dir), str(out_dir), str(tokenizer.path), None if clusters_dir is None else str(clusters_dir),
            num_clusters, splits, workers, allow_unassigned)
    if run != "slurm":
        binarize_from_paths(*call)
        return
    from xlbtm.launch.executor import make_executor
    from xlbtm.launch.wait import wait_for

    ex = make_executor("slurm", job_dir or out_dir / "logs", name="xlbtm-binarize", cpus_per_task=max(1, workers + 1),
                       timeout_min=24 * 60, site=site)
    job = ex.submit(binarize_from_paths, *call)
    print(f"binarize: job {job.job_id}; logs {job.paths.stdout} / {job.paths.stderr}", flush=True)
    wait_for([job], what="binarize")


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


def _executor(plans: list[ExpertPlan], spec: LaunchSpec, site=None):
    from xlbtm.launch.executor import make_executor

    root = plans[0].run_dir.parent
    return make_executor(spec.run, root / "logs", name=f"xlbtm-{plans[0].cfg.run_name}", nodes=spec.num_nodes,
                       tasks_per_node=spec.num_gpus, gpus_per_node=spec.num_gpus if spec.device == "cuda" else 0,
                       cpus_per_task=spec.cpus_per_task or 1, timeout_min=spec.timeout_min, mem_gb=spec.mem_gb,
                         site=site)


def submit(plans: list[ExpertPlan], spec: LaunchSpec, site=None, visible_gpus: tuple[int, ...] | None = None) -> list:
    """One job per expert, submitted as one array; every job has num_nodes x num_gpus tasks."""
    from xlbtm.train.job import ExpertJob

    if not plans:
        return []
    if spec.run == "debug" and spec.num_nodes * spec.num_gpus > 1:
        raise UsageError("--run debug runs in this process: use --num-nodes 1 --num-gpus 1")
    if visible_gpus is not None:  # one job per GPU set (local waves)
        jobs = []
        for p, gpus in zip(plans, visible_gpus):
            ex = _executor(plans, spec, site)
            if gpus is not None:
                ex.update_parameters(visible_gpus=list(gpus))
            jobs.append(ex.submit(ExpertJob(p.cfg.to_dict())))
        return jobs
    ex = _executor(plans, spec, site)
    with ex.batch():
        jobs = [ex.submit(ExpertJob(p.cfg.to_dict())) for p in plans]
    return jobs
