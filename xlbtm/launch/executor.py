"""One way to get a submitit executor for every stage: `--run slurm | local | debug`.

- slurm: `submitit.SlurmExecutor` (sbatch + srun). `executor.map_array(fn, xs)` and `with executor.batch():`
  submit job arrays (one array element per call). A function that is a `submitit.helpers.Checkpointable`
  is requeued on preemption / timeout (submitit catches the `--signal` it asks SLURM for and runs
  `scontrol requeue`); a function that resumes from its own checkpoints is requeued by `requeue_and_exit()`.
- local: `submitit.LocalExecutor`: the same pickled job, run as `tasks_per_node` local processes with the
  same SUBMITIT_* environment, so `init_distributed()` forms a real (gloo/NCCL) process group.
- debug: `submitit.DebugExecutor`: runs in this process when the result is asked for (pdb-friendly).

Logs of job <id> are in `<job_dir>/<id>/<id>_<task>_log.{out,err}`; `wait_for` prints where.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from xlbtm.cli import get_logger
from xlbtm.errors import UsageError
from xlbtm.launch.site import SiteConfig, resolve_site

log = get_logger("launch")

RunMode = Literal["slurm", "local", "debug"]  # --run: a SLURM job array, local processes, in this process
JobRunMode = Literal["local", "slurm"]  # commands whose jobs are always separate processes
RUN_MODES: tuple[str, ...] = typing.get_args(RunMode)


def _mem_str(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if float(mem_gb) == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def slurm_available() -> bool:
    """True when a SLURM controller answers (`sinfo` works)."""
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _visible_gpus() -> tuple[int, ...]:
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    try:
        return tuple(int(x) for x in raw.split(",")) if raw else ()
    except ValueError:  # GPU UUIDs / MIG names: leave the choice to submitit
        return ()


def make_executor(
    run: str,
    job_dir: str | os.PathLike,
    *,
    name: str,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int = 0,
    cpus_per_task: int = 1,
    timeout_min: int = 60,
    mem_gb: float | None = None,
    array_parallelism: int | None = None,
    site: SiteConfig | None = None,
    max_num_timeout: int = 3,
):
    """A submitit executor for `run` in {"slurm", "local", "debug"} writing its files under `job_dir`.

    The caller gives the job's shape (nodes, tasks, GPUs) and defaults for its size; the site config
    (file < env < flags, see `xlbtm.launch.site`) wins for time / mem / cpus_per_task when it sets them,
    and supplies partition / account / constraint / qos / extra sbatch options. `gpus_per_node` from the
    caller wins when > 0, else the site's value is used.
    """
    if run not in RUN_MODES:
        raise UsageError(f"--run: expected one of {', '.join(RUN_MODES)}, got {run!r}")
    import submitit

    site = site if site is not None else resolve_site()
    timeout_min = site.time_min if site.time_min is not None else timeout_min
    mem_gb = site.mem_gb if site.mem_gb is not None else mem_gb
    cpus_per_task = site.cpus_per_task if site.cpus_per_task is not None else cpus_per_task
    if not gpus_per_node and site.gpus_per_node:
        gpus_per_node = site.gpus_per_node
    if nodes < 1 or tasks_per_node < 1:
        raise UsageError(f"need nodes >= 1 and tasks per node >= 1 (got nodes={nodes}, tasks={tasks_per_node})")
    folder = Path(job_dir).resolve() / "%j"  # one folder per job (array element): logs + pickles

    if run == "debug":
        ex: submitit.Executor = submitit.DebugExecutor(folder=folder)
        log.debug("debug executor: jobs run in this process when their result is requested")
        return ex

    if run == "local":
        if nodes != 1:
            raise UsageError(f"--run local runs on one machine: got {nodes} nodes (use --run slurm)")
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=max_num_timeout)
        ex.update_parameters(timeout_min=timeout_min, tasks_per_node=tasks_per_node, gpus_per_node=gpus_per_node)
        visible = _visible_gpus()
        if gpus_per_node and visible:
            # submitit would hand out GPUs 0..n-1; keep the ones this process was given instead
            # (CUDA_VISIBLE_DEVICES=4,5 on a workstation, or inside a SLURM allocation).
            if gpus_per_node > len(visible):
                raise UsageError(f"{gpus_per_node} GPUs requested but CUDA_VISIBLE_DEVICES lists {len(visible)}")
            ex.update_parameters(visible_gpus=visible)
        # (the site's `setup` lines are for cluster nodes: not run for local jobs)
        return ex

    if not slurm_available():
        raise UsageError(
            "--run slurm: no SLURM controller answers (`sinfo` failed). Check that SLURM "
            "commands are on PATH, or start a local test cluster: sudo bash slurm/local/start.sh"
        )
    python = site.python or shlex.quote(sys.executable)
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout, python=python)
    params: dict[str, Any] = dict(
        job_name=name,
        nodes=nodes,
        ntasks_per_node=tasks_per_node,
        cpus_per_task=cpus_per_task,
        time=int(timeout_min),
    )
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if mem_gb is not None:
        params["mem"] = _mem_str(mem_gb)
    for key in ("partition", "account", "constraint", "qos"):
        value = getattr(site, key)
        if value:
            params[key] = value
    if array_parallelism is not None:
        params["array_parallelism"] = int(array_parallelism)
    if site.setup:
        params["setup"] = list(site.setup)
    if site.sbatch:
        # `#SBATCH --key=value`; an empty value means a bare flag (e.g. exclusive).
        params["additional_parameters"] = {k: (True if v == "" else v) for k, v in site.sbatch.items()}
    ex.update_parameters(**params)
    log.debug("slurm executor %s: %s", name, params)
    return ex


def requeue_and_exit(exit_code: int = 0) -> None:
    """Ask the scheduler to run this job again from the start, then exit.

    For jobs that resume from their own checkpoints (the expert trainer): after saving on a preemption
    signal, rank 0 calls this. Under SLURM it runs `scontrol requeue <job>` (the job goes back to
    PENDING and reruns the same pickled call); under submitit's LocalExecutor it exits with the code that
    makes the local controller restart the tasks. Other ranks just exit.
    """
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    executor = os.environ.get("SUBMITIT_EXECUTOR", "")
    rank = int(os.environ.get("SLURM_PROCID", os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0")))
    if executor == "local":
        if os.environ.get("XLBTM_REQUEUE_SLURM_JOB") == "1" and "SLURM_JOB_ID" in os.environ:
            # `--run local` inside an sbatch job (slurm/sbatch/*.sbatch opt in): requeue the SLURM job
            # itself, which stops everything in it; restarting the local tasks would be pointless.
            if rank == 0:
                r = subprocess.run(
                    ["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True, text=True, timeout=60
                )
                if r.returncode == 0:
                    log.info("requeued the enclosing SLURM job %s", os.environ["SLURM_JOB_ID"])
                    sys.exit(exit_code)
                log.warning(
                    "scontrol requeue %s: %s; restarting the local tasks instead",
                    os.environ["SLURM_JOB_ID"],
                    (r.stderr or r.stdout).strip(),
                )
            else:
                sys.exit(exit_code)
        sys.exit(LOCAL_REQUEUE_RETURN_CODE)
    if "SLURM_JOB_ID" in os.environ:
        if rank == 0:
            array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
            job_id = f"{array_id}_{task_id}" if array_id and task_id else os.environ["SLURM_JOB_ID"]
            r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                log.info("requeued SLURM job %s", job_id)
            else:  # e.g. SLURM itself is already requeuing it (preemption, `scontrol requeue`)
                log.warning("scontrol requeue %s: %s", job_id, (r.stderr or r.stdout).strip())
        # SLURM kills and requeues the job; leaving now means no result file is written for this run.
        sys.exit(exit_code)
    raise RuntimeError("requeue_and_exit() called outside a SLURM or submitit-local job")
