"""Launch layer against a real SLURM (slurm/local/start.sh): arrays, failures, SIGKILL, gloo, requeue.

Skip without a reachable slurmctld; FAIL instead when XLBTM_REQUIRE_SLURM=1 (CI). The job functions
below are defined in this module; the `slurm_cluster` fixture makes them picklable by value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from xlbtm.io import write_json
from xlbtm.launch import JobFailedError, make_executor, resolve_site, wait_for

pytestmark = pytest.mark.slurm


# ---------------------------------------------------------------------------------------------- job functions
def square(x):
    return x * x


def boom(x):
    raise ValueError(f"boom-{x}")


def sleep_forever(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)
    return "not killed"


def gloo_allreduce():
    import torch
    import torch.distributed as dist

    from xlbtm.launch import destroy_distributed, init_distributed

    info = init_distributed()
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    out = {
        "rank": info.rank,
        "world": info.world_size,
        "local_rank": info.local_rank,
        "backend": info.backend,
        "source": info.source,
        "sum": t.item(),
        "pid": os.getpid(),
    }
    destroy_distributed()
    return out


def count_to(state_path, n, step_s=0.25):
    """Counts to n one step at a time, persisting after each step; resumes from the file. On SIGTERM
    (preemption / `scontrol requeue`) it stops at the next step boundary and asks for a requeue, like the
    expert trainer does."""
    from xlbtm.launch import requeue_and_exit

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    p = Path(state_path)
    st = json.loads(p.read_text()) if p.exists() else {"i": 0, "starts": 0, "updates": []}
    st["starts"] += 1
    write_json(p, st)  # atomic: the test polls this file
    while st["i"] < n:
        if stop["flag"]:
            requeue_and_exit()
        time.sleep(step_s)
        st["i"] += 1
        st["updates"].append(st["i"])
        write_json(p, st)  # atomic: the test polls this file
    return st


class Counter:
    """A submitit Checkpointable: on the preemption/timeout signal submitit calls checkpoint() and requeues."""

    def __call__(self, state_path, n):
        p = Path(state_path)
        st = json.loads(p.read_text()) if p.exists() else {"i": 0, "starts": 0}
        st["starts"] += 1
        write_json(p, st)  # atomic: the test polls this file
        while st["i"] < n:
            time.sleep(0.25)
            st["i"] += 1
            write_json(p, st)  # atomic: the test polls this file
        return st

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(Counter(), *args, **kwargs)


def _executor(tmp_path, **kw):
    kw.setdefault("timeout_min", 10)
    return make_executor("slurm", tmp_path / "jobs", name="xlbtm-test", site=resolve_site(), **kw)


def _wait_file(path: Path, pred=lambda p: True, timeout=120.0):
    end = time.monotonic() + timeout
    while not (path.exists() and pred(path)):
        assert time.monotonic() < end, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- tests
def test_job_array_returns_results(slurm_cluster, tmp_path):
    ex = _executor(tmp_path)
    jobs = ex.map_array(square, [1, 2, 3])
    assert all("_" in j.job_id for j in jobs), [j.job_id for j in jobs]  # a real array: <id>_<index>
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1
    assert wait_for(jobs, "squares", poll_s=1) == [1, 4, 9]
    # the accounting database records them (submitit reads job states through sacct); it lags a little
    end = time.monotonic() + 60
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(j.job_id for j in jobs)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if out.count("COMPLETED") == 3 or time.monotonic() > end:
            break
        time.sleep(1)
    assert out.count("COMPLETED") == 3, out


def test_raising_job_reports_traceback_and_log(slurm_cluster, tmp_path):
    ex = _executor(tmp_path)
    jobs = ex.map_array(boom, [7])
    with pytest.raises(JobFailedError) as ei:
        wait_for(jobs, "boom", poll_s=1)
    e = ei.value
    assert "ValueError: boom-7" in str(e) and "Traceback" in str(e)
    assert e.job_id == jobs[0].job_id and e.state == "FAILED"
    assert e.log_path and Path(e.log_path).is_file() and e.log_path in str(e)
    assert "boom-7" in Path(e.log_path).read_text()


@pytest.mark.parametrize("how", ["kill -9", "scancel --signal=KILL"])
def test_sigkilled_job_is_reported_failed_not_hung(slurm_cluster, tmp_path, how):
    ex = _executor(tmp_path)
    pid_file = tmp_path / "pid"
    job = ex.submit(sleep_forever, str(pid_file))
    _wait_file(pid_file, lambda p: p.read_text().strip() != "")
    if how == "kill -9":
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    else:
        subprocess.run(["scancel", "--signal=KILL", job.job_id], check=True)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as ei:
        wait_for([job], "sleeper", poll_s=1)
    assert time.monotonic() - t0 < 90
    e = ei.value
    assert e.job_id == job.job_id
    assert e.state.split()[0] in ("FAILED", "CANCELLED"), e.state
    assert "no result was written" in str(e) and e.log_path and Path(e.log_path).is_file()


def test_vanished_job_does_not_hang(slurm_cluster, tmp_path):
    """A job id that neither sacct nor slurmctld knows (purged, wrong cluster) ends the wait as a failure."""
    from submitit.slurm.slurm import SlurmJob

    ghost = SlurmJob(folder=tmp_path / "jobs" / "%j", job_id="987654")
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as ei:
        wait_for([ghost], "ghost", poll_s=0.5, unknown_grace_s=2)
    assert time.monotonic() - t0 < 60
    assert "VANISHED" in ei.value.state


def test_two_task_job_forms_gloo_group(slurm_cluster, tmp_path):
    ex = _executor(tmp_path, tasks_per_node=2)
    job = ex.submit(gloo_allreduce)
    (res,) = wait_for([job], "gloo", poll_s=1, all_tasks=True)
    assert sorted(r["rank"] for r in res) == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and r["source"] == "submitit" for r in res)
    assert [r["sum"] for r in res] == [3.0, 3.0]
    assert res[0]["pid"] != res[1]["pid"]


def test_checkpointable_job_requeued_on_preemption_signal(slurm_cluster, tmp_path):
    """submitit's own path: the preemption signal -> checkpoint() -> scontrol requeue -> rerun finishes."""
    ex = _executor(tmp_path)
    state = tmp_path / "state.json"
    job = ex.submit(Counter(), str(state), 24)
    _wait_file(state, lambda p: json.loads(p.read_text())["i"] >= 2)
    job._interrupt()  # what SLURM does on preemption: SIGTERM, then the job's --signal (USR2)
    slurm_cluster.release(job.job_id)
    (res,) = wait_for([job], "counter", poll_s=1)
    assert res["i"] == 24 and res["starts"] == 2


def test_scontrol_requeue_resumes_and_finishes(slurm_cluster, tmp_path):
    """`scontrol requeue` of a running job: it stops at a step boundary, comes back, resumes, and finishes
    with every update done exactly once (no lost or repeated step)."""
    ex = _executor(tmp_path)
    state = tmp_path / "state.json"
    job = ex.submit(count_to, str(state), 24)
    _wait_file(state, lambda p: json.loads(p.read_text())["i"] >= 3)
    slurm_cluster.requeue(job.job_id)
    (res,) = wait_for([job], "count_to", poll_s=1)
    assert res["i"] == 24 and res["starts"] == 2
    assert res["updates"] == list(range(1, 25))


def test_start_script_is_idempotent(slurm_cluster):
    """A second start.sh on a running cluster finds every daemon by its PID file and leaves it alone."""
    if os.geteuid() != 0:
        pytest.skip("start.sh needs root")
    repo = Path(__file__).resolve().parents[1]
    nodes = slurm_cluster.nodes  # the mode that runs: start.sh without --nodes would switch to one node
    mode = [] if nodes == ["localhost"] else ["--nodes", str(len(nodes))]
    r = subprocess.run(["bash", str(repo / "slurm/local/start.sh"), *mode], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for daemon in ("munged", "mariadb", "slurmdbd", "slurmctld"):
        assert f"{daemon} already running" in r.stdout, r.stdout
    for node in nodes:
        assert "slurmd already running" + ("" if node == "localhost" else f" ({node})") in r.stdout, r.stdout
    assert "ready in" in r.stdout


@pytest.mark.slow
def test_sbatch_template_trains_one_expert_per_array_element(slurm_cluster, tmp_path):
    """slurm/sbatch/train_experts.sbatch: array element i trains cluster i (tiny model, 1 CPU worker)."""
    import sys

    from train_helpers import make_demo_data

    repo = Path(__file__).resolve().parents[1]
    data, tok, cdir = make_demo_data(tmp_path, n_train=80, n_valid=16, clusters=2)
    runs = tmp_path / "runs"
    (tmp_path / "slurm_logs").mkdir()
    env = dict(os.environ, XLBTM_PYTHON=sys.executable, XLBTM_CPU_WORKERS="1", OMP_NUM_THREADS="1")
    bin_dir = tmp_path / "data-bin"  # binarized once, before the array (as the template says)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "xlbtm.scripts.binarize",
            "--path-to-data",
            str(data),
            "--path-to-clusters-dir",
            str(cdir),
            "--tokenizer",
            str(tok),
            "--output-dir",
            str(bin_dir),
            "--workers",
            "0",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    r = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            "--array=0-1",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=15",
            f"--partition={slurm_cluster.partition}",
            str(repo / "slurm/sbatch/train_experts.sbatch"),
            "--seed-model",
            "debug",
            "--tokenizer",
            str(tok),
            "--num-clusters",
            "2",
            "--path-to-clusters-dir",
            str(cdir),
            "--path-to-data",
            str(data),
            "--serialization-dir",
            str(runs),
            "--binarized-dir",
            str(bin_dir),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--tokens-per-sample",
            "32",
            "--run-name",
            "tpl",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "slurm_logs").glob("*")))
    assert r.returncode == 0, r.stdout + r.stderr + logs
    for k in (0, 1):
        run_dir = runs / "2_clusters" / f"tpl.cluster{k}"
        assert json.loads((run_dir / "expert.json").read_text())["cluster"] == k
        steps = [json.loads(line).get("step") for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        assert max(s for s in steps if s is not None) == 3, steps
        assert f"expert {k}: job" in logs
