"""Wait for submitit jobs; never hang on a dead one; say what failed and where its log is.

submitit alone can wait forever: a SLURM job that vanished from `sacct` (no accounting, slurmdbd lag,
purged records) stays "UNKNOWN", a job preempted without requeue stays "PREEMPTED", and states are re-read
only every few minutes. `wait_for` forces a state refresh every `poll_s`, asks `scontrol` when sacct has
nothing (or one of those states) for longer than `unknown_grace_s`, and treats a job that slurmctld does not
know as running (and that left no result) as failed.

A node that fails under a job (NODE_FAIL: it went down, or was set DOWN) makes SLURM requeue the job, which
then waits, possibly forever, for nodes that are gone. `wait_for` reports such a job as failed (state
NODE_FAIL, with its log) and cancels the requeued copy, so that the rerun of the command (which resumes
from the last checkpoint, on the nodes that are left) is the one way on.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlbtm.cli import get_logger
from xlbtm.errors import XlbtmError

log = get_logger("launch")

_ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "PREEMPTED",
    "STAGE_OUT",
    "SIGNALING",
    "RESV_DEL_HOLD",
    "READY",
    "QUEUED",
}


# sacct states that may never change on their own: verified with scontrol after a grace period
_DOUBTFUL = {"UNKNOWN", "PREEMPTED", "REQUEUED"}


@dataclass
class JobFailure:
    job_id: str
    state: str
    error: str  # the job's traceback, or the tail of its stderr when it left no result
    stderr: str | None  # log paths (None when there is no such file)
    stdout: str | None
    task: int | None = None

    def render(self) -> str:
        logs = self.stderr or self.stdout or "(no log file)"
        where = f" task {self.task}" if self.task is not None else ""
        return f"job {self.job_id}{where} failed (state {self.state}); log: {logs}\n{self.error.rstrip()}"


class JobFailedError(XlbtmError):
    """One or more jobs failed. `.failures` holds a JobFailure per failed job (id, state, error, log paths)."""

    exit_code = 1

    def __init__(self, what: str, failures: list[JobFailure], total: int):
        self.what = what
        self.failures = failures
        first = failures[0]
        self.job_id, self.state, self.log_path = first.job_id, first.state, first.stderr
        msg = f"{what}: {len(failures)} of {total} job(s) failed. First: {first.render()}"
        if len(failures) > 1:
            msg += "\nOther failed jobs: " + ", ".join(
                f"{f.job_id} ({f.state}, log {f.stderr or f.stdout})" for f in failures[1:]
            )
        super().__init__(msg)


def _tail(path: Path | None, n: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64_000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _existing(p: Path) -> str | None:
    return str(p) if p.exists() else None


def _is_slurm(job) -> bool:
    from submitit.slurm.slurm import SlurmJob

    return isinstance(job, SlurmJob)


def _is_debug(job) -> bool:
    from submitit.local.debug import DebugJob

    return isinstance(job, DebugJob)


def scheduler_state(job_id: str) -> str | None:
    """Ask slurmctld directly (it keeps finished jobs for MinJobAge). None when it does not know the job."""
    try:
        r = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    for tok in r.stdout.split():
        if tok.startswith("JobState="):
            return tok.split("=", 1)[1]
    return None


def node_failures(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: nodes} for the jobs with an attempt that ended NODE_FAIL (`sacct -D` lists every attempt of
    a requeued job; one call for all of them)."""
    if not job_ids:
        return {}
    try:
        r = subprocess.run(
            ["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State,NodeList", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    for line in r.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().upper().startswith("NODE_FAIL"):
            found.setdefault(parts[0].strip(), parts[2].strip() or "?")
    return found


def _node_failed(job, nodes: str) -> JobFailure:
    """Report a job SLURM requeued after a node failure; cancel the requeued copy (see the module doc)."""
    try:
        subprocess.run(["scancel", job.job_id], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
    sub = _sub_jobs(job)[0]
    stderr, stdout = sub.paths.stderr, sub.paths.stdout
    tail = _tail(stderr) or _tail(stdout) or "(no log lines)"
    return JobFailure(
        job.job_id,
        f"NODE_FAIL (nodes {nodes})",
        f"a node of the job failed (nodes {nodes}); SLURM requeued the job, xlbtm cancelled the "
        "requeued copy: rerun the command to resume from the last checkpoint (with fewer "
        f"--num-nodes if the node stays down); last log lines:\n{tail}",
        _existing(stderr),
        _existing(stdout),
    )


def _sub_jobs(job) -> list:
    return list(job._sub_jobs) if getattr(job, "_sub_jobs", None) else [job]


def _failure_of(job, state: str) -> JobFailure | None:
    """Inspect a finished job: None if every task left a success result, else the first failure."""
    from submitit.core import utils as su

    for sub in _sub_jobs(job):
        sub._results_timeout_s = 5  # the scheduler already says the job ended; do not wait long for files
        stderr, stdout = sub.paths.stderr, sub.paths.stdout
        try:
            outcome, payload = sub._get_outcome_and_result()
        except (su.UncompletedJobError, FileNotFoundError):  # no result (or the job folder is gone)
            tail = _tail(stderr) or _tail(stdout) or "(the job wrote no log: it may not have started)"
            return JobFailure(
                job.job_id,
                state,
                "no result was written; last log lines:\n" + tail,
                _existing(stderr),
                _existing(stdout),
                sub.task_id,
            )
        if outcome == "error":
            if state.upper().split(" ")[0] in _ACTIVE | {"FINISHED", "COMPLETED", "DONE", "UNKNOWN"}:
                # The function raised; the process exited normally (or the scheduler's state is stale:
                # the result file can appear before sacct has the final state).
                state = "FAILED"
            return JobFailure(job.job_id, state, str(payload), _existing(stderr), _existing(stdout), sub.task_id)
    return None


def _run_debug_job(job) -> Any:
    """Run a `--run debug` job in this process. Not `job.results()`: on any error submitit's DebugJob opens
    `pdb.post_mortem()`, which hangs a script or CI run at a prompt nobody answers; the error is raised
    (and reported as a job failure) instead."""
    if getattr(job, "cancelled", False):
        raise RuntimeError(f"job {job.job_id} was cancelled")
    return job._submission.result()


def wait_for(
    jobs: Sequence[Any],
    what: str = "jobs",
    *,
    poll_s: float | None = None,
    status_every_s: float = 60.0,
    unknown_grace_s: float = 90.0,
    fail_fast: bool = False,
    all_tasks: bool = False,
    on_result: Callable[[int, Any], None] | None = None,
    progress: Callable[[int], str | None] | None = None,
) -> list:
    """Wait until every job ended; return their results in order, or raise `JobFailedError`.

    `progress(i)`: a line about running job i (e.g. step / total, loss, ETA from its log), shown for every
    job still running: redrawn in place every poll on a terminal, logged every `progress_every_s()` seconds
    otherwise (a log file gets lines, not carriage returns).

    A multi-task job's result is its task 0 result (`all_tasks=True`: the list over tasks).
    Failures are logged as soon as they are seen; the error is raised once all jobs ended
    (`fail_fast=True`: at the first failure, leaving the others running).
    `on_result(i, result)` is called as each successful job's result is collected (progress reports).
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if poll_s is None:
        poll_s = _env_seconds("XLBTM_POLL_S", 5.0)
    results: list[Any] = [None] * len(jobs)
    failures: list[tuple[int, JobFailure]] = []

    if all(_is_debug(j) for j in jobs):
        for i, job in enumerate(jobs):
            try:
                r = [_run_debug_job(job)]
                results[i] = r if all_tasks else r[0]
                if on_result is not None:
                    on_result(i, results[i])
            except Exception as e:  # noqa: BLE001 - any job error becomes a JobFailure
                import traceback

                failures.append(
                    (
                        i,
                        JobFailure(
                            job.job_id,
                            "FAILED",
                            "".join(traceback.format_exception(type(e), e, e.__traceback__)),
                            None,
                            None,
                        ),
                    )
                )
                if fail_fast:
                    break
        if failures:
            raise JobFailedError(what, [f for _, f in failures], len(jobs))
        return results

    folder = jobs[0].paths.folder
    log.info(
        "%s: waiting for %d job(s) (%s); logs: %s",
        what,
        len(jobs),
        _id_summary(jobs),
        str(folder).replace(jobs[0].job_id, "<job id>"),
    )
    pending = set(range(len(jobs)))
    try:
        _poll(
            jobs,
            what,
            pending,
            results,
            failures,
            poll_s,
            status_every_s,
            unknown_grace_s,
            fail_fast,
            all_tasks,
            on_result,
            _Progress(progress, what) if progress is not None else None,
        )
    except KeyboardInterrupt:
        if any(_is_slurm(jobs[i]) for i in pending):
            log.warning(
                "%s: stopped waiting; %d SLURM job(s) keep running (%s); cancel them with: scancel %s",
                what,
                len(pending),
                _id_summary([jobs[i] for i in sorted(pending)]),
                " ".join(sorted({jobs[i].job_id.split("_")[0] for i in pending})),
            )
        raise
    if failures:
        failures.sort(key=lambda t: t[0])
        raise JobFailedError(what, [f for _, f in failures], len(jobs))
    log.info("%s: all %d job(s) finished", what, len(jobs))
    return results


def _poll(
    jobs,
    what,
    pending,
    results,
    failures,
    poll_s,
    status_every_s,
    unknown_grace_s,
    fail_fast,
    all_tasks,
    on_result=None,
    progress: _Progress | None = None,
) -> None:
    unknown_since: dict[int, float] = {}
    ran: set[int] = set()  # jobs seen running: back to pending means requeued (preemption or node failure)
    last_status = time.monotonic()
    while pending:
        watchers = {id(type(j).watcher): type(j).watcher for j in jobs if _is_slurm(j)}
        for w in watchers.values():
            w.update()  # one sacct call for all jobs, every poll (submitit alone waits up to 10 min)
        seen: dict[int, tuple[str, bool]] = {}
        for i in sorted(pending):
            seen[i] = _observe(jobs[i], i, unknown_since, unknown_grace_s)
        node_failed = node_failures(_node_fail_suspects(jobs, seen, ran))
        for i in sorted(pending):
            job = jobs[i]
            state, ended = seen[i]
            if job.job_id in node_failed:
                # before its result: a job SLURM killed for a node failure may still have written one
                # (the trainer saves on SIGTERM and returns "preempted"), and its requeued copy waits on
                pending.discard(i)
                lost = _node_failed(job, node_failed[job.job_id])
                if progress is not None:
                    progress.clear()
                log.error("%s: %s", what, lost.render())
                failures.append((i, lost))
                if fail_fast:
                    break
                continue
            if not ended:
                continue
            failure = _failure_of(job, state)
            if failure is not None and _is_slurm(job) and _requeued(job):
                # sacct still shows the attempt that ended, but slurmctld has already requeued the job
                # (preemption, `scontrol requeue`, submitit's checkpoint): keep waiting for the next attempt
                continue
            pending.discard(i)
            if failure is None:
                r = job.results()
                results[i] = r if all_tasks else r[0]
                log.debug("%s: job %s finished", what, job.job_id)
                if on_result is not None:
                    on_result(i, results[i])
                continue
            if progress is not None:
                progress.clear()
            log.error("%s: %s", what, failure.render())
            failures.append((i, failure))
            if fail_fast:
                break
        if failures and fail_fast:
            break
        if pending and progress is not None:
            progress.show(sorted(pending))
        if pending:
            if time.monotonic() - last_status >= status_every_s:
                last_status = time.monotonic()
                if progress is not None:
                    progress.clear()
                log.info(
                    "%s: %d/%d done, %d failed; still waiting for %s",
                    what,
                    len(jobs) - len(pending),
                    len(jobs),
                    len(failures),
                    _states_summary([jobs[i] for i in sorted(pending)]),
                )
            time.sleep(poll_s)


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def progress_every_s() -> float:
    """Seconds between progress lines in a log: $XLBTM_PROGRESS_EVERY_S, default 30."""
    return _env_seconds("XLBTM_PROGRESS_EVERY_S", 30.0)


class _Progress:
    """The running jobs' progress lines: on a terminal one line per job, redrawn in place each poll; in a log
    one line per job per `progress_every_s()`."""

    def __init__(self, line: Callable[[int], str | None], what: str, stream=None):
        self.line, self.what = line, what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawn = 0  # lines on screen (terminal)
        self.last = -math.inf

    def _lines(self, pending: list[int]) -> list[str]:
        out = []
        for i in pending:
            try:
                text = self.line(i)
            except Exception as e:  # noqa: BLE001 - a progress line must never stop the wait
                text = f"(progress unavailable: {e})"
            if text:
                out.append(text)
        return out

    def show(self, pending: list[int]) -> None:
        now = time.monotonic()
        if self.tty:
            lines = self._lines(pending)
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.clear()
            self.stream.write("".join(f"{x[:width]}\n" for x in lines))
            self.stream.flush()
            self.drawn = len(lines)
        elif now - self.last >= progress_every_s():
            self.last = now
            for text in self._lines(pending):
                log.info("%s: %s", self.what, text)

    def clear(self) -> None:
        """Remove the drawn lines (before a log line, which would otherwise be overdrawn)."""
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.stream.flush()
            self.drawn = 0


def _observe(job, i: int, unknown_since: dict[int, float], unknown_grace_s: float) -> tuple[str, bool]:
    """(state, ended) of a job this poll. sacct has nothing (or a state that may be final, e.g. PREEMPTED
    without requeue): after the grace period, ask slurmctld, which knows live jobs and recently ended ones."""
    state = _state(job)
    ended = job.done()
    if not ended and _is_slurm(job) and state.split(" ")[0].upper() in _DOUBTFUL:
        first = unknown_since.setdefault(i, time.monotonic())
        if time.monotonic() - first > unknown_grace_s:
            sched = scheduler_state(job.job_id)
            if sched is None or sched.upper() not in _ACTIVE - {"PREEMPTED"}:
                state = sched or f"VANISHED (sacct says {state}, scontrol does not know the job)"
                ended = True
            else:
                unknown_since[i] = time.monotonic()  # slurmctld knows it: keep waiting
    else:
        unknown_since.pop(i, None)
    return state, ended


def _node_fail_suspects(jobs, seen: dict[int, tuple[str, bool]], ran: set[int]) -> list[str]:
    """SLURM jobs whose history may hold a NODE_FAIL: ended ones, and ones back to pending after running
    (requeued: by a preemption, or by a node failure). Each requeue is looked at once."""
    ids = []
    for i, (state, ended) in seen.items():
        if not _is_slurm(jobs[i]):
            continue
        head = state.split(" ")[0].upper()
        if head == "RUNNING" and not ended:
            ran.add(i)
        elif ended or head == "NODE_FAIL" or (i in ran and head in ("PENDING", "REQUEUED")):
            ran.discard(i)
            ids.append(jobs[i].job_id)
    return ids


def _requeued(job) -> bool:
    sched = scheduler_state(job.job_id)
    return sched is not None and sched.upper() in _ACTIVE - {"PREEMPTED", "COMPLETING"}


def _state(job) -> str:
    try:
        if _is_slurm(job):
            return job.watcher.get_state(job.job_id, mode="cache")
        return str(job.state)
    except Exception:  # noqa: BLE001 - a state we cannot read is UNKNOWN; done() decides
        return "UNKNOWN"


def _states_summary(jobs: list) -> str:
    counts: dict[str, int] = {}
    for j in jobs:
        s = _state(j).split(" ")[0]
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))


def _id_summary(jobs: list) -> str:
    ids = [j.job_id for j in jobs]
    return ", ".join(ids) if len(ids) <= 6 else f"{', '.join(ids[:3])}, ..., {ids[-1]}"
