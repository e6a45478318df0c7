"""Plan and launch the training of K experts: one submitit job per expert (an array), N x G tasks each.

    req = TrainExpertsRequest.from_args(args)   # or TrainExpertsRequest(run=..., seed_model=..., ...)
    plan = plan_experts(req)                    # validates; resolves corpus, clusters, tokenizer, binarized dir
    print("\n".join(describe_plan(plan)))
    results = run_plan(plan)                    # binarize what is missing, submit, wait (None: --no-wait)
    print("\n".join(describe_results(plan, results))); ok = all_completed(results)

`xlbtm.scripts.train_experts` is exactly that sequence behind its flags. The request and its plan live in
`xlbtm.train.plan`; this module runs a plan: binarization, submission, local waves, the result lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from xlbtm.cli import get_logger, setup_logging
from xlbtm.data.binarize import binarize, binarize_pairs, split_inputs
from xlbtm.errors import UsageError
from xlbtm.formats.binarized import MANIFEST, NOT_BINARIZED, binarized_lock, split_status
from xlbtm.formats.layout import RunLayout, train_log_path
from xlbtm.formats.pairs import pairs_dir_for
from xlbtm.launch.executor import make_executor
from xlbtm.launch.lifeline import jobs_die_with_this_process
from xlbtm.launch.wait import wait_for
from xlbtm.tokenizer import load_tokenizer
from xlbtm.train.expert_dir import RunLock
from xlbtm.train.job import ExpertJob
from xlbtm.train.plan import ExpertPlan, LaunchSpec, TrainExpertsPlan, apply_step_allocation, check_training_data
from xlbtm.train.progress import TrainProgress

log = get_logger("train")


def binarized_done(
    out_dir: Path,
    splits: list[str],
    tok_fingerprint: str,
    clusterer_fp: str | None,
    data_dir: Path,
    clusters_dir: Path | None,
) -> bool:
    """True when every split is binarized with this tokenizer and clusterer from exactly the files that are
    there now (nothing to do); a stale split is named in a warning."""
    for split in splits:
        d, why = split_status(
            out_dir, split, tok_fingerprint, clusterer_fp, split_inputs(data_dir, split, clusters_dir)
        )
        if d is None:
            if why != NOT_BINARIZED:
                log.warning(f"binarized split '{split}' in {out_dir} is out of date ({why}): re-binarizing it")
            return False
    return (Path(out_dir) / MANIFEST).is_file()


def binarize_from_paths(
    data_dir: str,
    out_dir: str,
    tokenizer_path: str,
    clusters_dir: str | None,
    num_clusters: int,
    splits: list[str],
    workers: int,
    allow_unassigned: bool,
) -> dict:
    """Picklable entry point (paths only) so binarization can run as its own job; the job holds the
    binarized dir's lock itself (it outlives a driver that is stopped while it waits)."""
    setup_logging("binarize")
    with binarized_lock(out_dir).held(_echo):
        return binarize(
            data_dir,
            out_dir,
            load_tokenizer(tokenizer_path),
            splits=splits,
            clusters_dir=clusters_dir,
            num_clusters=num_clusters,
            workers=workers,
            allow_unassigned=allow_unassigned,
        ).manifest


def ensure_binarized(
    data_dir: Path,
    out_dir: Path,
    tokenizer,
    clusters_dir: Path | None,
    num_clusters: int,
    splits: list[str],
    workers: int,
    allow_unassigned: bool,
    *,
    clusterer_fp: str | None = None,
    run: str = "local",
    site=None,
    job_dir: Path | None = None,
) -> None:
    """Binarize what is missing: in this process (local/debug), or as one SLURM job with `workers` CPUs
    (`--run slurm`: tokenizing a corpus is no work for a login node)."""
    if binarized_done(out_dir, splits, tokenizer.fingerprint, clusterer_fp, data_dir, clusters_dir):
        log.info(f"binarized data up to date: {out_dir}")
        return
    if run != "slurm":
        binarize(
            data_dir,
            out_dir,
            tokenizer,
            splits=splits,
            clusters_dir=clusters_dir,
            num_clusters=num_clusters,
            workers=workers,
            allow_unassigned=allow_unassigned,
        )
        return
    _binarize_job(
        binarize_from_paths,
        (
            str(data_dir),
            str(out_dir),
            str(tokenizer.path),
            None if clusters_dir is None else str(clusters_dir),
            num_clusters,
            splits,
            workers,
            allow_unassigned,
        ),
        "binarize",
        job_dir or out_dir / "logs",
        max(1, workers + 1),
        site,
    )


def _binarize_job(fn, args: tuple, what: str, job_dir: Path, cpus: int, site) -> None:
    """Run `fn(*args)` as one SLURM job and wait for it (its log paths printed as it is queued)."""
    ex = make_executor(
        "slurm", job_dir, name=f"xlbtm-{what.replace(' ', '-')}", cpus_per_task=cpus, timeout_min=24 * 60, site=site
    )
    job = ex.submit(fn, *args)
    print(f"{what}: job {job.job_id}; logs {job.paths.stdout} / {job.paths.stderr}", flush=True)
    wait_for([job], what=what)


def binarize_pairs_from_paths(
    parallel_dir: str,
    out_dir: str,
    tokenizer_path: str,
    splits: list[str],
    clusters_dir: str | None,
    allow_unassigned: bool,
    bin_dir: str,
) -> dict:
    """Picklable entry point (paths only) so parallel data can be binarized as its own job (holding
    `bin_dir`'s lock, as `binarize_from_paths` does)."""
    setup_logging("binarize")
    with binarized_lock(bin_dir).held(_echo):
        return binarize_pairs(
            parallel_dir,
            out_dir,
            load_tokenizer(tokenizer_path),
            splits=splits,
            clusters_dir=clusters_dir,
            allow_unassigned=allow_unassigned,
        )


def ensure_pairs_binarized(
    parallel_dir: Path,
    bin_dir: Path,
    tokenizer,
    splits: list[str],
    clusters_dir: Path | None = None,
    allow_unassigned: bool = False,
    *,
    clusterer_fp: str | None = None,
    run: str = "local",
    site=None,
    job_dir: Path | None = None,
) -> None:
    """Binarize the parallel data's splits (those it has: a valid split is optional) into
    `<binarized dir>/parallel`, per cluster with `clusters_dir` (assigned by `clusterer_fp`): in this process, or
    as a SLURM job with `--run slurm`, as the corpus is; splits already binarized from the same files are skipped."""
    out = pairs_dir_for(bin_dir)
    have = [s for s in splits if (Path(parallel_dir) / s).is_dir()]
    if binarized_done(
        out, have, tokenizer.fingerprint, clusterer_fp if clusters_dir else None, parallel_dir, clusters_dir
    ):
        log.info(f"binarized parallel data up to date: {out}")
        return
    if run != "slurm":
        binarize_pairs(
            parallel_dir, out, tokenizer, splits=have, clusters_dir=clusters_dir, allow_unassigned=allow_unassigned
        )
        return
    _binarize_job(
        binarize_pairs_from_paths,
        (
            str(parallel_dir),
            str(out),
            str(tokenizer.path),
            have,
            None if clusters_dir is None else str(clusters_dir),
            allow_unassigned,
            str(bin_dir),
        ),
        "binarize pairs",
        job_dir or out / "logs",
        1,
        site,
    )


def _executor(plans: list[ExpertPlan], spec: LaunchSpec, site=None):
    logs = RunLayout(plans[0].run_dir.parent).logs_dir
    return make_executor(
        spec.run,
        logs,
        name=f"xlbtm-{plans[0].cfg.run_name}",
        nodes=spec.num_nodes,
        tasks_per_node=spec.num_gpus,
        gpus_per_node=spec.num_gpus if spec.device == "cuda" else 0,
        cpus_per_task=spec.cpus_per_task or 1,
        timeout_min=spec.timeout_min,
        mem_gb=spec.mem_gb,
        site=site,
    )


def submit(
    plans: list[ExpertPlan], spec: LaunchSpec, site=None, visible_gpus: Sequence[tuple[int, ...] | None] | None = None
) -> list:
    """One job per expert, submitted as one array; every job has num_nodes x num_gpus tasks."""
    if not plans:
        return []
    if spec.run == "debug" and spec.num_nodes * spec.num_gpus > 1:
        raise UsageError("--run debug runs in this process: use --num-nodes 1 --num-gpus 1")
    if visible_gpus is not None:  # one job per GPU set (local waves): visible_gpus[i] for plans[i]
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


@contextlib.contextmanager
def claim_run_dirs(plan: TrainExpertsPlan) -> Iterator[None]:
    """Hold every expert's run-dir lock while the run is set up (binarized, allocated), so a second
    train_experts asked for one of these experts stops with one line naming this process instead of
    binarizing alongside and submitting a rival job. Released before submitting: each job takes its own run
    lock (`train_expert`). A run dir made only to be claimed is removed again when setting up fails."""
    claimed: list[RunLock] = []
    try:
        for p in plan.experts:
            lock = RunLock(p.run_dir, "being set up for training (binarizing, submitting)")
            why = lock.acquire()
            if why is not None:
                raise UsageError(
                    f"cluster {p.cluster}: {why}; wait for it to finish (or stop it), or train into another "
                    "--serialization-dir"
                )
            claimed.append(lock)
        yield
    except BaseException:
        for lock in claimed:
            lock.discard()
        raise
    finally:
        for lock in claimed:
            lock.release()


def _echo(line: str) -> None:
    print(line, flush=True)  # status lines must show before the (long) wait


def run_plan(plan: TrainExpertsPlan, echo: Callable[[str], Any] = _echo) -> list | None:
    """Binarize what is missing, submit one job per expert and wait: the jobs' results, in plan order.

    `--run local` goes in waves (never more concurrent experts than `plan.slots`). With
    `no_wait` and `--run slurm` it returns None right after submitting. `echo` gets one status line per job
    (its id, logs, metrics).

    Two runs into one serialization dir share its binarized data: the binarization (and the step allocation
    read from it) happens under the binarized dir's lock (`binarized_lock`), so a second run waits (saying who it waits for)
    and then reuses the data; and each expert's run dir is claimed first, so a second run asked for an
    expert this one is setting up stops at once with one line naming the holder."""
    # --run slurm binarizes in a job that takes the lock itself (and goes on if this driver is stopped);
    # held here as well, that job would wait for its own driver
    bin_lock = binarized_lock(plan.bin_dir).held(echo) if plan.request.run != "slurm" else contextlib.nullcontext()
    with claim_run_dirs(plan), bin_lock:
        prepare_plan(plan, echo)
    return launch_plan(plan, echo)


def prepare_plan(plan: TrainExpertsPlan, echo: Callable[[str], Any] = _echo) -> None:
    """Binarize what is missing, then apply the step allocation (its lines to `echo`); `run_plan` calls it
    holding the locks."""
    r = plan.request
    splits = [r.train_subset] + ([r.valid_subset] if r.valid_subset else [])
    if plan.data_dir is not None:
        ensure_binarized(
            plan.data_dir,
            plan.bin_dir,
            plan.tokenizer,
            plan.clusters_dir,
            r.num_clusters,
            splits,
            r.binarize_workers,
            r.allow_unassigned,
            clusterer_fp=plan.clusterer_fp,
            run=r.run,
            site=plan.site,
            job_dir=plan.job_dir,
        )
    if plan.parallel_dir is not None:
        ensure_pairs_binarized(
            plan.parallel_dir,
            plan.bin_dir,
            plan.tokenizer,
            splits,
            plan.parallel_clusters_dir,
            r.allow_unassigned,
            clusterer_fp=plan.clusterer_fp,
            run=r.run,
            site=plan.site,
            job_dir=plan.job_dir,
        )
    check_training_data(plan)  # an expert whose cluster is empty: one line now, not a failed job later
    if plan.allocation is None:
        plan.allocation = apply_step_allocation(plan)
        for line in plan.allocation or []:
            echo(line)


def launch_plan(plan: TrainExpertsPlan, echo: Callable[[str], Any] = _echo) -> list | None:
    """Submit one job per expert of a prepared plan and wait (`run_plan`'s second half)."""
    r = plan.request

    def status(ps, js):
        for p, j in zip(ps, js):
            echo(
                f"cluster {p.cluster}: job {j.job_id}; logs {j.paths.stdout} / {j.paths.stderr}; "
                f"metrics {train_log_path(p.run_dir)}"
            )

    if r.run == "local":
        # waves: never more concurrent experts than GPU sets (or CPU cores / G) on this machine
        slots = plan.slots
        assert slots is not None  # plan_experts sets them for --run local
        results = []
        for i in range(0, len(plan.experts), len(slots)):
            wave = plan.experts[i : i + len(slots)]
            with jobs_die_with_this_process():
                jobs = submit(wave, plan.spec, plan.site, visible_gpus=slots[: len(wave)])
            status(wave, jobs)
            results += wait_for(jobs, what="train_experts", progress=TrainProgress(wave))
        return results
    jobs = submit(plan.experts, plan.spec, plan.site)
    status(plan.experts, jobs)
    if r.no_wait and r.run == "slurm":
        return None
    return wait_for(jobs, what="train_experts", progress=TrainProgress(plan.experts))


def describe_results(plan: TrainExpertsPlan, results: list) -> list[str]:
    """One line per expert: its final status, step and validation loss."""
    lines = []
    for p, res in zip(plan.experts, results):
        vl = res.get("valid_loss") if isinstance(res, dict) else None
        lines.append(
            f"cluster {p.cluster}: {res.get('status')} at step {res.get('step')}"
            + (f", valid loss {vl:.3f} (base 2)" if vl is not None else "")
            + f" -> {p.run_dir}"
        )
    return lines


def all_completed(results: list) -> bool:
    return all(isinstance(res, dict) and res.get("status") == "completed" for res in results)
