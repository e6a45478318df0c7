"""Multi-node paths against a real two-node SLURM (`sudo bash slurm/local/start.sh --nodes 2`): nodes are
network namespaces on a private bridge, so rendezvous really crosses it (not loopback).

Skip on a one-node cluster; FAIL instead when XLBTM_REQUIRE_SLURM_NODES=2 (CI). The job functions below are
defined in this module; the `slurm_cluster` fixture makes them picklable by value.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import torch
from slurm_helpers import sacct_nodes
from train_helpers import final_weights, make_demo_data, train_losses

from xlbtm.launch import make_executor, resolve_site, wait_for

pytestmark = pytest.mark.slurm


# ---------------------------------------------------------------------------------------------- job functions
def rendezvous_report():
    """Join the job's process group and say where each rank ran and what it talked over."""
    import torch
    import torch.distributed as dist

    from xlbtm.launch import destroy_distributed, init_distributed

    info = init_distributed()
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    names = [None] * info.world_size
    dist.all_gather_object(names, os.environ.get("SLURMD_NODENAME"))
    out = {
        "rank": info.rank,
        "world": info.world_size,
        "local_rank": info.local_rank,
        "local_world": info.local_world_size,
        "sum": t.item(),
        "node": os.environ.get("SLURMD_NODENAME"),
        "nodelist": os.environ.get("SLURM_JOB_NODELIST"),
        "master": os.environ.get("MASTER_ADDR"),
        "port": os.environ.get("MASTER_PORT"),
        "gloo_if": os.environ.get("GLOO_SOCKET_IFNAME"),
        "all_nodes": names,
    }
    destroy_distributed()
    return out


def _executor(tmp_path, **kw):
    kw.setdefault("timeout_min", 10)
    return make_executor("slurm", tmp_path / "jobs", name="xlbtm-mn", site=resolve_site(), **kw)


# ---------------------------------------------------------------------------------------------- rendezvous
@pytest.mark.parametrize("tasks_per_node", [1, 2])
def test_two_node_job_rendezvous_crosses_the_bridge(slurm_two_nodes, tmp_path, tasks_per_node):
    from slurm_helpers import node_addr

    job = _executor(tmp_path, nodes=2, tasks_per_node=tasks_per_node).submit(rendezvous_report)
    (res,) = wait_for([job], "rendezvous", poll_s=1, all_tasks=True)
    world = 2 * tasks_per_node
    assert sorted(r["rank"] for r in res) == list(range(world))
    assert all(r["world"] == world and r["sum"] == world * (world + 1) / 2 for r in res), res
    first, second = sorted({r["node"] for r in res})
    assert res[0]["nodelist"] == f"{first[:-1]}[{first[-1]}-{second[-1]}]" or "," in res[0]["nodelist"], res[0]
    by_node = {n: sorted(r["local_rank"] for r in res if r["node"] == n) for n in (first, second)}
    assert by_node == {first: list(range(tasks_per_node)), second: list(range(tasks_per_node))}
    assert all(r["local_world"] == tasks_per_node for r in res)
    # MASTER_ADDR: the first node's NodeAddr (its name resolves nowhere), the same for every rank, not loopback
    assert {r["master"] for r in res} == {node_addr(first)} and not res[0]["master"].startswith("127.")
    assert len({r["port"] for r in res}) == 1
    assert all(r["gloo_if"] for r in res), res  # gloo bound the bridge's interface, not the hostname's loopback
    assert res[0]["all_nodes"].count(first) == tasks_per_node


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def mn_demo(tmp_path_factory):
    from xlbtm.data.binarize import binarize
    from xlbtm.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("mn")
    data, tok, cdir = make_demo_data(root, n_train=80, n_valid=16)
    binarize(data, root / "bin", load_tokenizer(tok), clusters_dir=cdir, workers=0)
    return root, data, tok, cdir


def _train_argv(demo, ser, run, *extra):
    root, data, tok, cdir = demo
    return [
        "--run",
        run,
        "--seed-model",
        "debug",
        "--tokenizer",
        str(tok),
        "--path-to-clusters-dir",
        str(cdir),
        "--num-clusters",
        "2",
        "--train-cluster",
        "1",
        "--path-to-data",
        str(data),
        "--serialization-dir",
        str(ser),
        "--data-name",
        "demo",
        "--binarized-dir",
        str(root / "bin"),
        "--batch-size",
        "2",
        "--tokens-per-sample",
        "32",
        "--learning-rate",
        "3e-3",
        "--log-interval",
        "1",
        "--binarize-workers",
        "0",
        "--device",
        "cpu",
        "--validate-interval-updates",
        "0",
        *extra,
    ]


def _job_id(out: str) -> str:
    return re.search(r"cluster 1: job (\S+);", out).group(1)


def _assert_same_run(a, b):
    la, lb = train_losses(a), train_losses(b)
    assert la and la == lb, (la, lb)
    wa, wb = final_weights(a), final_weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_train_experts_across_two_nodes_equals_one_node(slurm_two_nodes, mn_demo, tmp_path, monkeypatch, capsys, tp):
    """--num-nodes 2 --num-gpus 1: one expert, one task per node (dp=2, or tp=2); losses and final weights
    equal the same run as 2 processes on one node (--run local --num-gpus 2)."""
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.expert_dir import read_expert_info

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_two_nodes.partition)
    par = ["--tensor-parallel-size", "2"] if tp == 2 else []
    steps = ["--max-steps", "4", "--save-interval-updates", "2"]
    assert (
        main(_train_argv(mn_demo, tmp_path / "two", "slurm", "--num-nodes", "2", "--num-gpus", "1", *steps, *par)) == 0
    )
    job = _job_id(capsys.readouterr().out)
    assert main(_train_argv(mn_demo, tmp_path / "one", "local", "--num-gpus", "2", *steps, *par)) == 0
    two, one = (tmp_path / d / "2_clusters" / "demo.cluster1" for d in ("two", "one"))
    info = read_expert_info(two).data
    assert (info["dp"], info.get("tp", 1)) == ((2, 1) if tp == 1 else (1, 2)), info
    nodes = sacct_nodes([job])[job]
    assert nodes in ("node[1-2]", "node1,node2"), nodes  # really on both nodes
    _assert_same_run(two, one)


@pytest.mark.slow
def test_two_node_expert_requeue_resumes_without_lost_or_repeated_update(
    slurm_two_nodes, mn_demo, tmp_path, monkeypatch, capsys
):
    """`scontrol requeue` of a running two-node expert job: both ranks save, SLURM reruns it, it resumes."""
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.metrics import read_train_log

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_two_nodes.partition)
    ser, steps = tmp_path / "ser", 120
    assert (
        main(
            _train_argv(
                mn_demo,
                ser,
                "slurm",
                "--num-nodes",
                "2",
                "--num-gpus",
                "1",
                "--max-steps",
                str(steps),
                "--save-interval-updates",
                "1000",
                "--no-wait",
            )
        )
        == 0
    )
    job_id = _job_id(capsys.readouterr().out)
    run = ser / "2_clusters" / "demo.cluster1"
    t0 = time.time()
    while not any(r.get("step", 0) >= 5 for r in read_train_log(run)):
        assert time.time() - t0 < 180, f"job did not start training (state {slurm_two_nodes.state(job_id)})"
        time.sleep(0.5)
    slurm_two_nodes.requeue(job_id)
    t0 = time.time()
    while (ck := latest_checkpoint(run)) is None or ck.name != f"step_{steps}":
        assert time.time() - t0 < 300, f"requeued job did not finish (state {slurm_two_nodes.state(job_id)})"
        time.sleep(1)
    log = read_train_log(run)
    resumes = [r for r in log if r["kind"] == "resume"]
    assert len(resumes) == 1 and 5 <= resumes[0]["step"] < steps
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, steps + 1))


@pytest.mark.slow
def test_node_down_mid_job_fails_with_log_then_rerun_on_remaining_node_resumes(
    slurm_two_nodes, mn_demo, tmp_path, monkeypatch, capsys
):
    """node2 set DOWN under a running two-node expert: the command ends with a NODE_FAIL job failure naming
    its log (SLURM's requeued copy, which could never start, is cancelled); rerun with --num-nodes 1
    --num-gpus 2 on the remaining node resumes from the last checkpoint and finishes."""
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.launch import JobFailedError
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.metrics import read_train_log

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_two_nodes.partition)
    ser, steps = tmp_path / "ser", 400
    run = ser / "2_clusters" / "demo.cluster1"
    common = ["--max-steps", str(steps), "--save-interval-updates", "5"]

    import threading

    def take_node2_down():
        t0 = time.time()
        while (ck := latest_checkpoint(run)) is None or int(ck.name.split("_")[1]) < 10:
            if time.time() - t0 > 240:
                return
            time.sleep(0.5)
        slurm_two_nodes.set_node_state("node2", "DOWN", "xlbtm test: node down mid-job")

    killer = threading.Thread(target=take_node2_down, daemon=True)
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as ei:
        main(_train_argv(mn_demo, ser, "slurm", "--num-nodes", "2", "--num-gpus", "1", *common))
    killer.join(timeout=5)
    assert time.monotonic() - t0 < 300
    e = ei.value
    assert e.state.startswith("NODE_FAIL"), e.state
    assert e.log_path and os.path.isfile(e.log_path) and e.log_path in str(e), str(e)
    job_id = e.job_id
    assert slurm_two_nodes.wait_state(job_id, {"CANCELLED"}, timeout=60) == "CANCELLED"  # no zombie requeue
    saved = int(latest_checkpoint(run).name.split("_")[1])
    assert 10 <= saved < steps
    capsys.readouterr()
    # the rerun, on the node that is left: same data parallelism (2 tasks on node1), resumes
    assert main(_train_argv(mn_demo, ser, "slurm", "--num-nodes", "1", "--num-gpus", "2", *common)) == 0
    log = read_train_log(run)
    resumes = [r for r in log if r["kind"] == "resume"]
    assert resumes and resumes[-1]["step"] == saved, resumes
    assert latest_checkpoint(run).name == f"step_{steps}"
    train_steps = [r["step"] for r in log if r["kind"] == "train"]
    assert sorted(set(train_steps)) == list(range(1, steps + 1))  # steps after the checkpoint were redone


# ---------------------------------------------------------------------------------------------- cluster
@pytest.mark.slow
def test_cluster_job_array_spreads_over_both_nodes_and_equals_local(slurm_two_nodes, tmp_path, monkeypatch):
    """`cluster --run slurm`: the array's tasks land on both nodes (sacct) and the assignments equal
    `--run local`."""
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.formats.clusters import iter_assignments
    from xlbtm.scripts.cluster import main

    data = tmp_path / "d"
    langs = ["en", "de", "ru", "uk"]
    for shard in range(4):  # 4 files -> a 4-task array
        p = data / "train" / str(shard) / "a.jsonl"
        p.parent.mkdir(parents=True)
        p.write_text(
            "".join(json.dumps({"text": f"t{shard}{i}", "lang": langs[(shard + i) % 4]}) + "\n" for i in range(6))
        )
    train_typological_clusterer(langs, 2, tmp_path / "c", mode="xelm")
    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_two_nodes.partition)
    argv = ["--data-dir", str(data), "--path-to-clusterer", str(tmp_path / "c"), "--split", "train"]
    assert main([*argv, "--output-prefix", str(tmp_path / "local"), "--run", "local", "--num-workers", "1"]) == 0
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    assert (
        main([*argv, "--output-prefix", str(tmp_path / "slurm"), "--run", "slurm", "--job-dir", str(tmp_path / "jobs")])
        == 0
    )
    assert list(iter_assignments(tmp_path / "slurm", "train")) == list(iter_assignments(tmp_path / "local", "train"))
    nodes = sacct_nodes([], name="xlbtm-cluster", since=since, want=4)
    assert len(nodes) == 4 and set(nodes.values()) == {"node1", "node2"}, nodes
