"""Launch layer without SLURM: site config precedence, sbatch rendering, local/debug executors, wait_for
failure surfacing, init_distributed (submitit-local, torchrun-style, single), and the slurm fixture logic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import pytest

from xlbtm.errors import InputError, UsageError
from xlbtm.io import write_json
from xlbtm.launch import (
    JobFailedError,
    add_slurm_args,
    init_distributed,
    make_executor,
    resolve_site,
    site_from_args,
    wait_for,
)
from xlbtm.launch.site import parse_time_min

REPO = Path(__file__).resolve().parents[1]
# Job functions below run in other processes, which do not have tests/ on sys.path.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------------------------------- job functions
def square(x):
    return x * x


def boom(x):
    raise ValueError(f"boom-{x}")


def sleep_forever(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def gloo_allreduce():
    import torch
    import torch.distributed as dist

    from xlbtm.launch import destroy_distributed

    info = init_distributed()
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    destroy_distributed()
    return {
        "rank": info.rank,
        "world": info.world_size,
        "backend": info.backend,
        "source": info.source,
        "sum": t.item(),
        "pid": os.getpid(),
    }


def count_to(state_path, n):
    """Resumable counter that, on SIGTERM, stops at a step boundary and asks for a requeue."""
    from xlbtm.launch import requeue_and_exit

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    p = Path(state_path)
    st = json.loads(p.read_text()) if p.exists() else {"i": 0, "starts": 0, "updates": [], "pid": 0}
    st["starts"] += 1
    st["pid"] = os.getpid()
    write_json(p, st)  # atomic: the test polls this file
    while st["i"] < n:
        if stop["flag"]:
            requeue_and_exit()
        time.sleep(0.2)
        st["i"] += 1
        st["updates"].append(st["i"])
        write_json(p, st)  # atomic: the test polls this file
    return st


def _fake_commands(tmp_path: Path, **scripts: str) -> Path:
    """A bin dir holding one shell script per keyword (name -> body), to put first on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in scripts.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    return fake


def _wait_file(path: Path, pred=lambda p: True, timeout=60.0):
    end = time.monotonic() + timeout
    while not (path.exists() and pred(path)):
        assert time.monotonic() < end, f"{path} did not appear in {timeout} s"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- site config
SITE_TOML = """
partition = "file-part"
account = "file-acct"
qos = "file-qos"
time = "2:00:00"
mem_gb = 64
cpus_per_task = 10
gpus_per_node = 8
setup = ["module load cuda"]
[sbatch]
exclusive = true
mail-type = "END"
"""


def test_site_precedence_file_env_flags(tmp_path):
    site_file = tmp_path / "site.toml"
    site_file.write_text(SITE_TOML)
    env = {
        "XLBTM_SITE_CONFIG": str(site_file),
        "XLBTM_SLURM_ACCOUNT": "env-acct",
        "XLBTM_SLURM_QOS": "env-qos",
        "XLBTM_SLURM_TIME": "90",
    }
    cfg = resolve_site({"qos": "flag-qos", "time_min": "1-00:00:00"}, env=env)
    assert cfg.partition == "file-part"  # file only
    assert cfg.account == "env-acct"  # env beats file
    assert cfg.qos == "flag-qos"  # flag beats env and file
    assert cfg.time_min == 24 * 60  # flag
    assert cfg.mem_gb == 64 and cfg.cpus_per_task == 10 and cfg.gpus_per_node == 8
    assert cfg.sbatch == {"exclusive": "", "mail-type": "END"} and cfg.setup == ["module load cuda"]
    assert cfg.sources["account"] == "$XLBTM_SLURM_ACCOUNT" and cfg.sources["qos"] == "--slurm-qos"
    assert "partition=file-part" in cfg.describe()
    # without flags, env wins over the file
    assert resolve_site({}, env=env).time_min == 90


def test_site_from_argparse_flags(tmp_path):
    import argparse

    site_file = tmp_path / "site.json"
    site_file.write_text(json.dumps({"slurm": {"partition": "jp", "constraint": "volta32gb"}}))
    p = add_slurm_args(argparse.ArgumentParser())
    args = p.parse_args(
        [
            "--site-config",
            str(site_file),
            "--slurm-partition",
            "fp",
            "--time",
            "30",
            "--mem-gb",
            "12.5",
            "--cpus-per-task",
            "3",
            "--slurm-extra",
            "mail-user=a@b.c",
        ]
    )
    cfg = site_from_args(args)
    assert (cfg.partition, cfg.constraint, cfg.time_min, cfg.mem_gb, cfg.cpus_per_task) == (
        "fp",
        "volta32gb",
        30,
        12.5,
        3,
    )
    assert cfg.sbatch == {"mail-user": "a@b.c"}
    # unset flags leave the file's values alone
    cfg = site_from_args(p.parse_args(["--site-config", str(site_file)]))
    assert cfg.partition == "jp" and cfg.time_min is None


@pytest.mark.parametrize(
    "value,minutes",
    [(90, 90), ("90", 90), ("30:30", 31), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160), ("0-00:01", 1)],
)
def test_parse_time(value, minutes):
    assert parse_time_min(value) == minutes


def test_site_errors_name_their_source(tmp_path):
    bad = tmp_path / "site.toml"
    bad.write_text('partitoin = "x"\n')
    with pytest.raises(InputError, match="partitoin") as ei:
        resolve_site({}, env={"XLBTM_SITE_CONFIG": str(bad)})
    assert str(bad) in str(ei.value)
    bad.write_text('time = "soon"\n')
    with pytest.raises(InputError, match="time"):
        resolve_site({}, env={}, path=bad)
    with pytest.raises(UsageError, match="XLBTM_SLURM_MEM_GB"):
        resolve_site({}, env={"XLBTM_SLURM_MEM_GB": "lots"})
    with pytest.raises(UsageError, match="--time"):
        resolve_site({"time_min": "tomorrow"}, env={})
    with pytest.raises(InputError, match="not found"):
        resolve_site({}, env={"XLBTM_SITE_CONFIG": str(tmp_path / "missing.toml")})


def test_slurm_executor_renders_site_settings(tmp_path, monkeypatch):
    """The sbatch file submitit writes carries the resolved site settings (no SLURM needed)."""
    import submitit

    import xlbtm.launch.executor as ex_mod

    monkeypatch.setattr(ex_mod, "slurm_available", lambda: True)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    site_file = tmp_path / "site.toml"
    site_file.write_text(SITE_TOML)
    site = resolve_site({"partition": "flag-part"}, env={"XLBTM_SITE_CONFIG": str(site_file)})
    ex = make_executor(
        "slurm",
        tmp_path / "jobs",
        name="xl-test",
        nodes=2,
        tasks_per_node=4,
        timeout_min=5,
        array_parallelism=3,
        site=site,
    )
    text = ex._make_submission_file_text("python -m x", "uid")
    for line in [
        "--partition=flag-part",
        "--account=file-acct",
        "--qos=file-qos",
        "--time=120",
        "--mem=64GB",
        "--cpus-per-task=10",
        "--gpus-per-node=8",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--job-name=xl-test",
        "#SBATCH --exclusive",
        "--mail-type=END",
        "module load cuda",
    ]:
        assert line in text, (line, text)
    # the caller's values apply when the site does not set them
    ex = make_executor("slurm", tmp_path / "jobs", name="n", timeout_min=7, mem_gb=1.5, site=resolve_site({}, env={}))
    text = ex._make_submission_file_text("python -m x", "uid")
    assert "--time=7" in text and "--mem=1536MB" in text and "--partition" not in text


def test_make_executor_rejects_bad_modes(tmp_path):
    with pytest.raises(UsageError, match="--run"):
        make_executor("cloud", tmp_path, name="x")
    with pytest.raises(UsageError, match="one machine"):
        make_executor("local", tmp_path, name="x", nodes=2)


# ---------------------------------------------------------------------------------------------- executors
def test_debug_executor_results_and_failure(tmp_path):
    ex = make_executor("debug", tmp_path / "jobs", name="d", site=resolve_site({}, env={}))
    assert wait_for([ex.submit(square, 4), ex.submit(square, 5)], "debug") == [16, 25]
    with pytest.raises(JobFailedError, match="boom-3"):
        wait_for([ex.submit(boom, 3)], "debug")


def test_local_executor_array_and_traceback(tmp_path):
    ex = make_executor("local", tmp_path / "jobs", name="l", timeout_min=5, site=resolve_site({}, env={}))
    jobs = ex.map_array(square, [2, 3])
    assert wait_for(jobs, "squares", poll_s=0.2) == [4, 9]
    jobs = ex.map_array(boom, [1, 2])
    with pytest.raises(JobFailedError) as ei:
        wait_for(jobs, "boom", poll_s=0.2)
    e = ei.value
    assert len(e.failures) == 2 and e.state == "FAILED"
    assert "ValueError: boom-1" in str(e) and e.job_id == jobs[0].job_id
    assert Path(e.log_path).is_file() and e.log_path in str(e) and "boom-1" in Path(e.log_path).read_text()


def test_local_sigkilled_task_is_reported_failed(tmp_path):
    ex = make_executor("local", tmp_path / "jobs", name="l", timeout_min=5, site=resolve_site({}, env={}))
    pid_file = tmp_path / "pid"
    job = ex.submit(sleep_forever, str(pid_file))
    _wait_file(pid_file, lambda p: p.read_text().strip() != "")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError, match="no result was written"):
        wait_for([job], "sleeper", poll_s=0.2)
    assert time.monotonic() - t0 < 30


@pytest.mark.distributed
def test_local_executor_two_tasks_form_gloo_group(tmp_path):
    """submitit's LocalExecutor with tasks_per_node=2 really gives 2 processes that form a gloo group."""
    ex = make_executor(
        "local", tmp_path / "jobs", name="g", tasks_per_node=2, timeout_min=5, site=resolve_site({}, env={})
    )
    (res,) = wait_for([ex.submit(gloo_allreduce)], "gloo", poll_s=0.2, all_tasks=True)
    assert sorted(r["rank"] for r in res) == [0, 1] and res[0]["pid"] != res[1]["pid"]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and r["source"] == "submitit" for r in res)
    assert [r["sum"] for r in res] == [3.0, 3.0]


def test_local_requeue_resumes(tmp_path):
    """requeue_and_exit() under the local executor: the controller restarts the task, which resumes."""
    ex = make_executor("local", tmp_path / "jobs", name="r", timeout_min=5, site=resolve_site({}, env={}))
    state = tmp_path / "state.json"
    job = ex.submit(count_to, str(state), 15)
    _wait_file(state, lambda p: json.loads(p.read_text())["i"] >= 3)
    os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)
    (res,) = wait_for([job], "count", poll_s=0.2)
    assert res["starts"] == 2 and res["i"] == 15 and res["updates"] == list(range(1, 16))


# ---------------------------------------------------------------------------------------------- distributed
def test_init_distributed_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR", "SLURM_PROCID", "SLURM_STEP_ID"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.backend, info.source) == (0, 1, 0, None, "single")
    assert info.device.type == "cpu" and info.is_main and not info.distributed


@pytest.mark.distributed
def test_init_distributed_torchrun_env(tmp_path):
    """torchrun-style env vars (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) in 2 processes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import json, torch, torch.distributed as dist\n"
        "from xlbtm.launch import init_distributed, destroy_distributed\n"
        "i = init_distributed(device='cpu'); t = torch.tensor([i.rank + 1.0]); dist.all_reduce(t)\n"
        "print(json.dumps([i.rank, i.world_size, i.local_rank, i.backend, i.source, t.item()]))\n"
        "destroy_distributed()\n"
    )
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUBMITIT_", "SLURM_"))}
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True))
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [[0, 2, 0, "gloo", "torchrun", 3.0], [1, 2, 1, "gloo", "torchrun", 3.0]]


# ---------------------------------------------------------------------------------------------- fixture logic
@pytest.mark.parametrize("require", ["", "1"])
def test_slurm_fixture_skips_or_fails_without_slurm(tmp_path, require):
    """No slurmctld: slurm tests skip with a reason; with XLBTM_REQUIRE_SLURM=1 they fail instead."""
    fake = _fake_commands(
        tmp_path, sinfo="echo 'slurm_load_partitions: Unable to contact slurm controller' >&2\nexit 1"
    )
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", XLBTM_REQUIRE_SLURM=require)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_slurm.py::test_vanished_job_does_not_hang",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    if require:
        assert r.returncode != 0 and "XLBTM_REQUIRE_SLURM=1 but SLURM is not usable" in out, out
    else:
        assert r.returncode == 0 and "1 skipped" in out and "Unable to contact slurm controller" in out, out


def test_start_script_refuses_non_root(tmp_path):
    """slurm/local/start.sh explains that it needs root instead of failing halfway."""
    import shutil

    # A world-readable copy: the checkout may sit under a 0700 directory that `nobody` cannot enter.
    scratch = Path(tempfile.mkdtemp(prefix="xlbtm-start-"))
    try:
        scratch.chmod(0o755)
        script = scratch / "start.sh"
        shutil.copy(REPO / "slurm/local/start.sh", script)
        script.chmod(0o755)
        cmd = ["bash", str(script)]
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("runuser not available to drop root")
            cmd = ["runuser", "-u", "nobody", "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert r.returncode == 1 and "must run as root" in r.stderr, r.stderr


def test_site_example_file_is_valid():
    cfg = resolve_site({}, env={}, path=REPO / "slurm" / "site.example.toml")
    assert cfg.partition and cfg.account and cfg.time_min == 3 * 24 * 60
    assert cfg.gpus_per_node == 8 and cfg.setup and all(isinstance(x, str) for x in cfg.setup)


def test_local_executor_keeps_the_given_gpus(tmp_path, monkeypatch):
    """--run local with CUDA_VISIBLE_DEVICES=4,5 (a workstation or an sbatch allocation) uses GPUs 4,5."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    site = resolve_site({}, env={})
    ex = make_executor("local", tmp_path / "jobs", name="g", tasks_per_node=2, gpus_per_node=2, site=site)
    assert tuple(ex.parameters["visible_gpus"]) == (4, 5)
    with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES"):
        make_executor("local", tmp_path / "jobs", name="g", gpus_per_node=3, site=site)


def test_job_ports_avoid_the_ephemeral_range():
    """The rendezvous port every task derives from the job id is the same for all tasks, differs between
    jobs, and lies below Linux's ephemeral range, where srun's own sockets could already hold it."""
    from xlbtm.launch.distributed import _port_for

    ports = [_port_for(str(j)) for j in range(2000)]
    assert all(20000 <= p < 32768 for p in ports)
    assert _port_for("540") == _port_for("540") and len(set(ports)) > 1500


# ---------------------------------------------------------------------------------------------- multi-node units
@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node[1-2]", ["node1", "node2"]),
        ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
        ("localhost", ["localhost"]),
        ("", []),
    ],
)
def test_parse_node_list(nodelist, hosts):
    from xlbtm.launch.distributed import parse_node_list

    assert parse_node_list(nodelist) == hosts


@pytest.mark.parametrize("spec, counts", [("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,3", [1, 3])])
def test_parse_tasks_per_node(spec, counts):
    from xlbtm.launch.distributed import parse_tasks_per_node

    assert parse_tasks_per_node(spec) == counts


def test_srun_env_local_world_size_is_per_node(monkeypatch):
    """An uneven step (3 tasks on the first node, 1 on the second): LOCAL_WORLD_SIZE is this node's count."""
    from xlbtm.launch import distributed

    monkeypatch.setattr(distributed, "resolve_node_addr", lambda name: f"addr-of-{name}")
    for k, v in dict(
        SLURM_PROCID="3",
        SLURM_STEP_ID="0",
        SLURM_JOB_ID="77",
        SLURM_STEP_NUM_TASKS="4",
        SLURM_STEP_NUM_NODES="2",
        SLURM_STEP_NODELIST="node[1-2]",
        SLURM_LOCALID="0",
        SLURM_NODEID="1",
        SLURM_STEP_TASKS_PER_NODE="3,1",
    ).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("XLBTM_MASTER_PORT", raising=False)
    env = distributed._env_from_srun()
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "0", "1")
    assert env["MASTER_ADDR"] == "addr-of-node1"
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert distributed._env_from_srun()["LOCAL_WORLD_SIZE"] == "3"


def test_resolve_node_addr_uses_the_cluster_mapping(monkeypatch):
    """A node name that resolves nowhere, or only to loopback, is looked up in slurmctld (NodeAddr)."""
    from xlbtm.launch import distributed

    addrs = {"node1": None, "vm": "127.0.0.1", "gpu7": "10.1.2.7"}
    monkeypatch.setattr(distributed, "_resolves_to", lambda name: addrs.get(name))
    node_addrs = {"node1": "10.77.0.11", "vm": "10.0.0.5"}
    monkeypatch.setattr(distributed, "_scontrol_node_addr", lambda name: node_addrs.get(name))
    assert distributed.resolve_node_addr("node1") == "10.77.0.11"
    assert distributed.resolve_node_addr("vm") == "10.0.0.5"  # its own /etc/hosts maps it to loopback
    assert distributed.resolve_node_addr("gpu7") == "gpu7"  # resolves: no controller call needed
    assert distributed.resolve_node_addr("ghost") == "ghost"  # nothing knows it: the name, with a warning


def test_scontrol_node_addr_parses_nodeaddr(tmp_path, monkeypatch):
    from xlbtm.launch.distributed import _scontrol_node_addr

    fake = _fake_commands(
        tmp_path,
        scontrol="echo 'NodeName=node2 Arch=x86_64 CoresPerSocket=1 NodeAddr=10.77.0.12 "
        "NodeHostName=node2 Version=22.05.8'",
    )
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert _scontrol_node_addr("node2") == "10.77.0.12"


def test_gloo_interface_is_the_one_towards_master():
    from xlbtm.launch.distributed import _gloo_interface, _interface_with

    assert _gloo_interface("127.0.0.1") is None  # one node: gloo's own choice (loopback) is right
    assert _interface_with("127.0.0.1") in ("lo", "lo0")


def test_node_failures_reads_every_attempt(tmp_path, monkeypatch):
    """sacct -D lists a requeued job's attempts: one that ended NODE_FAIL marks the job."""
    from xlbtm.launch.wait import node_failures

    fake = _fake_commands(
        tmp_path,
        sacct="printf '671|NODE_FAIL|node[1-2]\\n671|PENDING|None assigned\\n"
        "672_1|COMPLETED|node1\\n672_2|REQUEUED|node2\\n'",
    )
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert node_failures(["671", "672_1", "672_2"]) == {"671": "node[1-2]"}
    assert node_failures([]) == {}
