"""Thread limits of the clustering stage (xlbtm.cluster.threads) and where they are applied."""

import numpy as np
import pytest
import torch

from xlbtm.cluster import threads


def test_limit_threads_sets_and_restores_torch_blas_and_encoder_threads():
    from threadpoolctl import threadpool_info

    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    before_torch, before_enc = torch.get_num_threads(), threads.current_threads()
    with threads.limit_threads(1, encoder=3):
        assert torch.get_num_threads() == 1
        assert threads.current_threads() == 3
        from xlbtm.cluster.featurize import _num_threads

        assert _num_threads() == 3  # what sentencepiece's encode gets
        assert all(p["num_threads"] == 1 for p in threadpool_info())
        with threads.limit_threads(2):
            assert torch.get_num_threads() == 2 and threads.current_threads() == 2
        assert torch.get_num_threads() == 1 and threads.current_threads() == 3
    assert torch.get_num_threads() == before_torch and threads.current_threads() == before_enc


def test_available_cpus_is_affinity_capped_by_cgroup_quota(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads, "_cgroup_quota_cpus", lambda: None)
    assert threads.available_cpus() == 6
    monkeypatch.setattr(threads, "_cgroup_quota_cpus", lambda: 2)
    assert threads.available_cpus() == 2
    assert threads.threads_for(10) == 1  # small ops: one thread
    assert threads.threads_for(threads.PARALLEL_MIN_ELEMENTS, limit=6) == 6


@pytest.mark.parametrize("big", [False, True])
def test_kmeans_runs_single_threaded_unless_large(monkeypatch, big):
    from xlbtm.cluster import kmeans

    seen = []
    real = kmeans.kmeans_plusplus
    monkeypatch.setattr(
        kmeans, "kmeans_plusplus", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k)
    )
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    if big:
        monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 10)
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    before = torch.get_num_threads()
    kmeans.fit_kmeans(x, 3, balanced=True, seed=0, device="cpu")
    assert seen == [2 if big else 1]
    assert torch.get_num_threads() == before


def test_assignment_workers_get_their_share_of_the_cpus(tmp_path, monkeypatch):
    """`cluster --num-workers 2` on 4 CPUs: two files at a time in two forked worker processes, torch / BLAS
    one thread each, sentencepiece 2."""
    import json
    import os
    import time

    from threadpoolctl import threadpool_info

    from xlbtm.cluster import assign as assign_mod
    from xlbtm.cluster.featurize import _num_threads
    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.demo_corpus import write_demo_corpus

    src = tmp_path / "src"
    write_demo_corpus(src, n_train=120, n_valid=10, seed=0)
    docs = [line for p in sorted((src / "train").rglob("*.jsonl")) for line in p.read_text().splitlines()]
    for i in range(4):
        p = tmp_path / "data" / "train" / "00000" / f"p{i}.jsonl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(docs[i::4]) + "\n")
    train_tfidf_clusterer(tmp_path / "data" / "train", 3, tmp_path / "c", featurizer="word", seed=0)
    monkeypatch.setattr(threads, "available_cpus", lambda: 4)
    real = assign_mod.assign_file
    log = tmp_path / "spy.jsonl"

    def spy(c, job, **kw):  # runs in the worker processes: reports through a file
        t0 = time.monotonic()
        blas = sorted({i["num_threads"] for i in threadpool_info()})
        time.sleep(0.3)  # let the other worker start
        out = real(c, job, **kw)
        with open(log, "a") as f:
            f.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "t0": t0,
                        "t1": time.monotonic(),
                        "blas": blas,
                        "torch": torch.get_num_threads(),
                        "encoder": _num_threads(),
                    }
                )
                + "\n"
            )
        return out

    monkeypatch.setattr(assign_mod, "assign_file", spy)
    a = assign_mod.assign_corpus(tmp_path / "data", tmp_path / "c", tmp_path / "a", "train", workers=2)
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(seen) == 4 and len({s["pid"] for s in seen}) == 2 and os.getpid() not in {s["pid"] for s in seen}
    assert all(s["blas"] == [1] and s["torch"] == 1 and s["encoder"] == 2 for s in seen)
    peak = max(sum(o["t0"] <= s["t0"] < o["t1"] for o in seen) for s in seen)
    assert peak == 2
    monkeypatch.setattr(assign_mod, "assign_file", real)
    b = assign_mod.assign_corpus(tmp_path / "data", tmp_path / "c", tmp_path / "b", "train", workers=1)
    assert a["splits"] == b["splits"]
    for p in (tmp_path / "b").rglob("*.jsonl"):
        assert (tmp_path / "a" / p.relative_to(tmp_path / "b")).read_bytes() == p.read_bytes()
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["splits"]["train"]["files"]
