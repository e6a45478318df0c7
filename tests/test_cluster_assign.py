import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from tolerance import fp_tol

from xlbtm.cluster import assign as assign_mod
from xlbtm.cluster.artifact import load_clusterer
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.clusters import iter_assignments, read_manifest


def _write(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The demo corpus re-split into 6 small train files (3 shards) + valid."""
    from xlbtm.demo_corpus import write_demo_corpus

    src = tmp_path_factory.mktemp("src")
    write_demo_corpus(src, n_train=240, n_valid=30, seed=1)
    docs = [json.loads(line) for p in sorted((src / "train").rglob("*.jsonl")) for line in p.read_text().splitlines()]
    root = tmp_path_factory.mktemp("data")
    for i in range(6):
        _write(root / "train" / f"{i // 2:05d}" / f"part{i % 2}.jsonl", docs[i::6])
    shutil.copytree(src / "valid", root / "valid")
    return root


@pytest.fixture(scope="module")
def clusterer(corpus, tmp_path_factory):
    from xlbtm.cluster.train import train_tfidf_clusterer

    out = tmp_path_factory.mktemp("c") / "clusterer"
    c, _ = train_tfidf_clusterer(corpus / "train", 4, out, balanced=True, featurizer="word", max_docs=200, seed=0)
    return out


def test_artifact_roundtrip_without_pickle(clusterer, corpus, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading an artifact")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    c = load_clusterer(clusterer)
    assert c.kind == "tfidf" and c.num_clusters == 4 and c.featurizer_kind == "word"
    assert {p.name for p in clusterer.iterdir()} == {"clusterer.json", "arrays.safetensors", "vocab.json"}
    meta = json.loads((clusterer / "clusterer.json").read_text())
    assert meta["balanced"] is True and meta["fit"]["num_docs"] == 200
    assert max(meta["fit"]["sizes"]) - min(meta["fit"]["sizes"]) <= 1
    texts = [json.loads(line)["text"] for line in (corpus / "valid" / "demo.jsonl").read_text().splitlines()]
    p1 = c.predict(texts)
    p2 = load_clusterer(clusterer).predict(texts)
    np.testing.assert_array_equal(p1, p2)
    feats = c.transform(texts)
    np.testing.assert_array_equal(p1, c.distances(feats).argmin(1))
    np.testing.assert_allclose(feats, c.featurize_token_ids(c.featurizer.encode(texts)), atol=fp_tol(1.0))  # unit rows
    assert c.projection.shape == (c.idf.shape[0], c.centroids.shape[1])
    pb = c.predict_balanced(texts)
    assert np.bincount(pb, minlength=4).max() - np.bincount(pb, minlength=4).min() <= 1
    assert len(c.top_terms(5)) == 4


def test_artifact_tampering_is_detected(clusterer, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(clusterer, bad)
    meta = json.loads((bad / "clusterer.json").read_text())
    meta["num_clusters"] = 5
    (bad / "clusterer.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="fingerprint does not match"):
        load_clusterer(bad)
    shutil.rmtree(bad)
    shutil.copytree(clusterer, bad)
    with open(bad / "arrays.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(InputError, match="modified or is corrupt"):
        load_clusterer(bad)
    with pytest.raises(InputError, match="not a clusterer directory"):
        load_clusterer(tmp_path)


def test_assignment_resumes_after_a_crash_with_identical_outputs(corpus, clusterer, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    m = assign_mod.assign_corpus(corpus, clusterer, ref, "train", run="local", workers=1, num_clusters=4)
    assert m["num_clusters"] == 4 and m["fingerprint"] == load_clusterer(clusterer).fingerprint
    assert sum(m["splits"]["train"]["documents"]) == 240 == sum(m["documents"])
    assert sum(m["splits"]["train"]["chars"]) == sum(sum(v["chars"]) for v in m["splits"]["train"]["lang"].values())
    pairs = list(iter_assignments(ref, "train"))
    assert len(pairs) == 240 and pairs[0][0] == "train/00000/part0.jsonl|0"
    assert len({sp for sp, _ in pairs}) == 240

    # crash after 3 files (an exception mid-way through the 4th file's writing)
    out = tmp_path / "out"
    real = assign_mod.assign_file
    calls = {"n": 0}

    def crashing(c, job, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(c, job, **kw)

    monkeypatch.setattr(assign_mod, "assign_file", crashing)
    with pytest.raises(KeyboardInterrupt):
        assign_mod.assign_corpus(corpus, clusterer, out, "train", run="local", workers=1)
    done = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jsonl"))
    assert len(done) == 3 and not (out / "manifest.json").exists()
    # a partial file left by a hard kill (temp name) and a stale finished file for a changed input
    (out / "train/00001/.part1.jsonl.abc123.tmp").write_text('{"sp_id": "x|0", "cluster": 0}\n')
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}

    calls["n"] = -100
    m2 = assign_mod.assign_corpus(corpus, clusterer, out, "train", run="local", workers=1)
    assert calls["n"] == -100 + 3  # only the 3 unfinished files were redone
    for p, t in mtimes.items():
        assert p.stat().st_mtime_ns == t  # finished files untouched
    assert not list(out.rglob("*.tmp"))
    for p in ref.rglob("*.jsonl"):
        assert (out / p.relative_to(ref)).read_bytes() == p.read_bytes()
    assert m2["splits"] == m["splits"] | {}  # same counts
    assert m2["splits"]["train"]["files"] == m["splits"]["train"]["files"]

    # valid split into the same dir keeps train in the manifest
    assign_mod.assign_corpus(corpus, clusterer, out, "valid", run="local", workers=1)
    man = read_manifest(out)
    assert set(man["splits"]) == {"train", "valid"}
    assert sum(man["documents"]) == 240 + 30


def test_local_workers_match_one_worker(corpus, clusterer, tmp_path):
    import logging

    seen = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("xlbtm.cluster")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        a = assign_mod.assign_corpus(corpus, clusterer, tmp_path / "a", "train", run="local", workers=2)
        b = assign_mod.assign_corpus(corpus, clusterer, tmp_path / "b", "train", run="local", workers=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    n = 6  # the fixture's train files
    for done in range(1, n + 1):  # per-file progress, in both modes
        assert sum(m.startswith(f"assigned {done}/{n} files") for m in seen) == 2, seen
    last = [m for m in seen if m.startswith(f"assigned {n}/{n} files")]
    assert all(", 240 docs, " in m and " docs/s (" in m for m in last), last
    assert a["splits"] == b["splits"]
    assert list(iter_assignments(tmp_path / "a", "train")) == list(iter_assignments(tmp_path / "b", "train"))


def _capture(monkeypatch):
    import logging

    seen = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("xlbtm.cluster")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    return seen, lambda: logger.removeHandler(handler)


def test_progress_is_throttled_on_many_files(monkeypatch):
    seen, stop = _capture(monkeypatch)
    now = [0.0]
    try:
        p = assign_mod.Progress(100, every_s=5.0, clock=lambda: now[0])
        for i in range(100):
            now[0] += 0.5  # a file every half second: a line every 5 s, plus the first and the last
            p.add(1, 10, f"f{i}")
    finally:
        stop()
    assert len(seen) == 1 + 10, seen
    assert seen[0] == "assigned 1/100 files, 10 docs, 20 docs/s (0 s): f0"
    assert seen[-1] == "assigned 100/100 files, 1,000 docs, 20 docs/s (50 s): f99"


def test_slurm_progress_per_array_task(corpus, clusterer, tmp_path, monkeypatch):
    """--run slurm logs files done / total and docs/s as array tasks finish (in-process debug executor
    standing in for SLURM: the driver code is the same)."""
    import xlbtm.launch as launch

    real = launch.make_executor
    monkeypatch.setattr(launch, "make_executor", lambda run, job_dir, **kw: real("debug", job_dir, **kw))
    seen, stop = _capture(monkeypatch)
    try:
        m = assign_mod.assign_corpus(
            corpus, clusterer, tmp_path / "o", "train", run="slurm", job_dir=tmp_path / "jobs", max_array_tasks=3
        )
    finally:
        stop()
    assert sum(m["documents"]) == 240
    lines = [s for s in seen if s.startswith("assigned ")]
    assert [s.split(",")[0] for s in lines] == ["assigned 2/6 files", "assigned 4/6 files", "assigned 6/6 files"]
    assert ", 240 docs, " in lines[-1] and "docs/s" in lines[-1] and "(3/3 tasks)" in lines[-1], lines


def test_assignment_bad_inputs(corpus, clusterer, tmp_path):
    with pytest.raises(UsageError, match="--num-clusters 3 disagrees"):
        assign_mod.assign_corpus(corpus, clusterer, tmp_path / "o", "train", num_clusters=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a clusterer directory"):
        assign_mod.assign_corpus(corpus, tmp_path / "empty", tmp_path / "o", "train")
    with pytest.raises(InputError, match="directory not found"):
        assign_mod.assign_corpus(corpus, clusterer, tmp_path / "o", "test")
    bad = tmp_path / "bad"
    _write(bad / "train" / "0" / "x.jsonl", [{"text": "fine"}])
    with open(bad / "train" / "0" / "x.jsonl", "a") as f:
        f.write('{"no_text": 1}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: missing required field 'text'"):
        assign_mod.assign_corpus(bad, clusterer, tmp_path / "o2", "train", workers=1)
    assert not (tmp_path / "o2" / "train" / "0" / "x.jsonl").exists()  # nothing half-written
    m = assign_mod.assign_corpus(bad, clusterer, tmp_path / "o3", "train", workers=1, skip_bad_lines=True)
    assert m["splits"]["train"]["skipped_lines"] == 1 and sum(m["documents"]) == 1
    # the same bad line in a worker process: the error arrives whole (file and line), no temp file is left
    _write(bad / "train" / "1" / "y.jsonl", [{"text": "also fine"}] * 3)
    with pytest.raises(InputError, match=r"x.jsonl:2: missing required field 'text'") as e:
        assign_mod.assign_corpus(bad, clusterer, tmp_path / "o4", "train", workers=2)
    assert e.value.path.endswith("x.jsonl") and e.value.line == 2
    assert not list((tmp_path / "o4").rglob("*.tmp")) and not (tmp_path / "o4" / "train" / "0" / "x.jsonl").exists()


def test_typological_assignment_uses_lang(tmp_path):
    from xlbtm.cluster.train import train_typological_clusterer

    data = tmp_path / "d"
    _write(
        data / "train" / "0" / "a.jsonl",
        [
            {"text": "a", "lang": "en"},
            {"text": "b", "lang": "ru"},
            {"text": "c", "lang": "uk"},
            {"text": "d", "lang": "de"},
        ],
    )
    c = train_typological_clusterer(["en", "de", "ru", "uk"], 2, tmp_path / "t", mode="xelm")
    m = assign_mod.assign_corpus(data, tmp_path / "t", tmp_path / "o", "train", workers=1)
    got = dict(iter_assignments(tmp_path / "o", "train"))
    assert got["train/0/a.jsonl|1"] == got["train/0/a.jsonl|2"] == c.lang_to_cluster["ru"]
    assert m["splits"]["train"]["lang"]["en"]["documents"][c.lang_to_cluster["en"]] == 1
    _write(data / "train" / "0" / "a.jsonl", [{"text": "a", "lang": "en"}, {"text": "b"}])
    with pytest.raises(InputError, match=r"a.jsonl:2: document train/0/a.jsonl\|1 has no string 'lang'"):
        assign_mod.assign_corpus(data, tmp_path / "t", tmp_path / "o", "train", workers=1)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_job_arrays_match_local_and_report_failures(corpus, clusterer, tmp_path, slurm_cluster):
    from xlbtm.launch import JobFailedError

    ref = assign_mod.assign_corpus(corpus, clusterer, tmp_path / "local", "train", run="local", workers=1)
    m = assign_mod.assign_corpus(
        corpus, clusterer, tmp_path / "slurm", "train", run="slurm", job_dir=tmp_path / "jobs", max_array_tasks=3
    )  # 6 files -> 3 tasks x 2 files
    assert m["splits"] == ref["splits"]
    assert list(iter_assignments(tmp_path / "slurm", "train")) == list(iter_assignments(tmp_path / "local", "train"))
    # a bad line fails its array task; the error names the job and its log
    bad = tmp_path / "bad"
    _write(bad / "train" / "0" / "x.jsonl", [{"text": "fine"}])
    with open(bad / "train" / "0" / "x.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.raises(JobFailedError) as e:
        assign_mod.assign_corpus(bad, clusterer, tmp_path / "o", "train", run="slurm", job_dir=tmp_path / "jobs2")
    msg = str(e.value)
    assert "x.jsonl:2" in msg and str(tmp_path / "jobs2") in msg


def test_assignment_memory_is_flat_in_corpus_size(clusterer, tmp_path):
    import tracemalloc

    c = load_clusterer(clusterer)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]

    def peak(n):
        p = tmp_path / f"in{n}" / "train" / "0" / "a.jsonl"
        _write(p, [{"text": " ".join(rng.choice(words, 80)), "lang": "en"} for _ in range(n)])
        job = assign_mod.FileJob(
            str(p), "train/0/a.jsonl", str(tmp_path / f"out{n}.jsonl"), assign_mod.input_signature(p)
        )
        tracemalloc.start()
        assign_mod.assign_file(c, job, batch_size=64)
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return pk

    small, big = peak(300), peak(3000)
    assert big < 1.5 * small, (small, big)


def test_sample_documents_even_across_shards_and_deterministic(tmp_path):
    from xlbtm.cluster.train import sample_documents

    for s in range(3):
        _write(tmp_path / "train" / str(s) / "a.jsonl", [{"text": f"s{s} d{i}", "lang": "en"} for i in range(100)])
    a = sample_documents(tmp_path, 30, seed=1)
    assert len(a.texts) == 30 == len(set(a.texts)) and a.total_docs == 300
    per_shard = [sum(t.startswith(f"s{s} ") for t in a.texts) for s in range(3)]
    assert min(per_shard) >= 3  # drawn from every shard, not the first files only
    assert sample_documents(tmp_path, 30, seed=1).texts == a.texts
    assert sample_documents(tmp_path, 30, seed=2).texts != a.texts
    with open(tmp_path / "train" / "2" / "a.jsonl", "a") as f:
        f.write("not json\n" * 200)
    with pytest.raises(InputError, match=r"a.jsonl:\d+: malformed JSON"):
        sample_documents(tmp_path, 250, seed=0)
    b = sample_documents(tmp_path, 250, seed=0, skip_bad_lines=True)
    assert 0 < len(b.texts) < 250


def test_cluster_files_of_removed_inputs_are_removed(clusterer, tmp_path):
    data = tmp_path / "d"
    docs = [{"text": "alpha beta gamma"}, {"text": "delta epsilon"}]
    _write(data / "train" / "0" / "a.jsonl", docs)
    _write(data / "train" / "1" / "b.jsonl", docs)
    out = tmp_path / "o"
    assign_mod.assign_corpus(data, clusterer, out, "train", workers=1)
    (data / "train" / "1" / "b.jsonl").unlink()
    m = assign_mod.assign_corpus(data, clusterer, out, "train", workers=1)
    assert not (out / "train" / "1" / "b.jsonl").exists() and sum(m["documents"]) == 2
    assert [sp for sp, _ in iter_assignments(out, "train")] == ["train/0/a.jsonl|0", "train/0/a.jsonl|1"]


def test_worker_processes_equal_in_process_predict_and_resumes(corpus, clusterer, tmp_path, monkeypatch):
    """Files on 3 forked workers give exactly the clusterer's own predict() per file; a file that fails in one
    worker stops the run without touching finished files, and the rerun redoes only the unfinished ones."""
    from xlbtm.corpus import iter_file

    c = load_clusterer(clusterer)
    out = tmp_path / "out"
    assign_mod.assign_corpus(corpus, clusterer, out, "train", run="local", workers=3)
    for p in sorted((corpus / "train").rglob("*.jsonl")):
        rel = p.relative_to(corpus).as_posix()
        docs = list(iter_file(p, rel))
        want = "".join(json.dumps({"sp_id": d.sp_id, "cluster": int(k)}) + "\n" for d, k in zip(docs, c.predict(docs)))
        assert (out / rel).read_text() == want

    out2 = tmp_path / "out2"
    real = assign_mod.assign_file
    seen = []

    def failing(cl, job, **kw):
        seen.append(job.rel)
        if job.rel.endswith("00001/part0.jsonl"):
            raise InputError("simulated bad file", job.path)
        return real(cl, job, **kw)

    monkeypatch.setattr(assign_mod, "assign_file", failing)
    with pytest.raises(InputError, match="simulated"):
        assign_mod.assign_corpus(corpus, clusterer, out2, "train", run="local", workers=2)
    finished = {p.relative_to(out2).as_posix(): p.read_bytes() for p in out2.rglob("*.jsonl")}
    assert "train/00001/part0.jsonl" not in finished and not list(out2.rglob("*.tmp"))
    monkeypatch.setattr(assign_mod, "assign_file", real)
    redone = []
    monkeypatch.setattr(assign_mod, "assign_file", lambda cl, job, **kw: redone.append(job.rel) or real(cl, job, **kw))
    assign_mod.assign_corpus(corpus, clusterer, out2, "train", run="local", workers=2)
    assert sorted(redone) == sorted(
        set(f"train/{p.parent.name}/{p.name}" for p in (corpus / "train").rglob("*.jsonl")) - set(finished)
    )
    for rel, data in finished.items():
        assert (out2 / rel).read_bytes() == data == (out / rel).read_bytes()
    for p in out.rglob("*.jsonl"):
        assert (out2 / p.relative_to(out)).read_bytes() == p.read_bytes()


def _processes_with(marker: str) -> list[int]:
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_command_leaves_no_worker_behind_and_the_rerun_finishes(corpus, clusterer, tmp_path, sig):
    """`kill` of the command (no cleanup runs in it) must not leave its forked workers waiting on the pool's
    queue forever (they did, before PR_SET_PDEATHSIG); their half-written files are temp files the rerun
    removes, and the rerun's cluster files equal an uninterrupted run's."""
    import signal
    import subprocess
    import sys
    import time

    marker = f"xlbtm-kill-test-{sig}-{tmp_path.name}"
    out = tmp_path / "out"
    code = (
        "import sys, time\nfrom xlbtm.cluster import assign\nreal = assign.assign_file\n"
        "def slow(c, job, **kw):\n    time.sleep(0.5)\n    return real(c, job, **kw)\n"
        "assign.assign_file = slow\n"
        "assign.assign_corpus(sys.argv[1], sys.argv[2], sys.argv[3], 'train', workers=2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(corpus), str(clusterer), str(out), marker])
    deadline = time.monotonic() + 60
    while len(_processes_with(marker)) < 3 and time.monotonic() < deadline:  # the command and its 2 workers
        time.sleep(0.05)
    assert len(_processes_with(marker)) == 3, "the workers did not start"
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == [], "workers outlived the killed command"
    assign_mod.assign_corpus(corpus, clusterer, out, "train", workers=2)
    assert not list(out.rglob("*.tmp"))
    ref = tmp_path / "ref"
    assign_mod.assign_corpus(corpus, clusterer, ref, "train", workers=1)
    assert list(iter_assignments(out, "train")) == list(iter_assignments(ref, "train"))


# ----------------------------------------------------------------------- a corpus that changes under `cluster`


def _replace_with_reversed_lines(path):
    """The same documents in reverse order: same size, same line count, so the sp_ids of the old cluster file
    all still resolve (nothing is unassigned) but name other documents now. Replaced as a new file, as a
    download or an `rsync` would."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    tmp = path.with_name("incoming.tmp")
    tmp.write_text("".join(reversed(lines)), encoding="utf-8")
    os.replace(tmp, path)


def test_a_file_replaced_while_cluster_reads_it_is_not_published(corpus, clusterer, tmp_path, monkeypatch):
    import xlbtm.corpus as corpus_mod

    data = tmp_path / "d"
    shutil.copytree(corpus / "train", data / "train")
    victim = data / "train" / "00001" / "part0.jsonl"
    real = corpus_mod.iter_file

    def replaced_mid_read(path, *a, **kw):
        for i, doc in enumerate(real(path, *a, **kw)):
            if i == 1 and Path(path) == victim:
                _replace_with_reversed_lines(victim)
            yield doc

    monkeypatch.setattr(corpus_mod, "iter_file", replaced_mid_read)
    out = tmp_path / "o"
    with pytest.raises(InputError, match="changed while `cluster` read it.*Re-run the same cluster command") as e:
        assign_mod.assign_corpus(data, clusterer, out, "train", workers=1)
    assert e.value.path == str(victim)
    # its cluster file was not published (nor a temp file left), and no manifest vouches for the split
    assert not (out / "train" / "00001" / "part0.jsonl").exists() and not list(out.rglob("*.tmp"))
    assert not (out / "manifest.json").exists()

    # a file replaced after it was clustered, before the manifest: not published as if it described the file
    monkeypatch.setattr(corpus_mod, "iter_file", real)
    real_run = assign_mod._run_local

    def then_replaced(*a, **kw):
        real_run(*a, **kw)
        _replace_with_reversed_lines(victim)

    monkeypatch.setattr(assign_mod, "_run_local", then_replaced)
    with pytest.raises(InputError, match="changed while `cluster` ran"):
        assign_mod.assign_corpus(data, clusterer, out, "train", workers=1)
    assert not (out / "manifest.json").exists()

    # the rerun redoes that file from what it holds now
    monkeypatch.setattr(assign_mod, "_run_local", real_run)
    assign_mod.assign_corpus(data, clusterer, out, "train", workers=1)
    c = load_clusterer(clusterer)
    texts = [json.loads(line)["text"] for line in victim.read_text().splitlines()]
    got = [k for sp, k in iter_assignments(out, "train") if sp.startswith("train/00001/part0.jsonl|")]
    assert got == c.predict(texts).tolist()


def test_binarize_refuses_cluster_files_of_an_older_corpus(corpus, clusterer, tmp_path, caplog):
    """The issue's case: a corpus file replaced after `cluster` read it, then binarized at once. Refused with
    the cluster command to rerun; after that rerun, every document is in its own cluster's stream."""
    from xlbtm.data.binarize import binarize
    from xlbtm.data.dataset import TokenStream
    from xlbtm.formats.binarized import bin_path, split_dir
    from xlbtm.formats.clusters import stats_path
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    data = tmp_path / "d"
    shutil.copytree(corpus / "train", data / "train")
    texts = [json.loads(line)["text"] for p in sorted(data.rglob("*.jsonl")) for line in p.read_text().splitlines()]
    train_sentencepiece(texts, tmp_path / "tok", vocab_size=300)
    tok = load_tokenizer(tmp_path / "tok")
    cdir = tmp_path / "clusters"
    assign_mod.assign_corpus(data, clusterer, cdir, "train", workers=1)
    victim = data / "train" / "00001" / "part0.jsonl"
    _replace_with_reversed_lines(victim)
    c = load_clusterer(clusterer)
    stale = [k for sp, k in iter_assignments(cdir, "train") if sp.startswith("train/00001/part0.jsonl|")]
    now = c.predict([json.loads(line)["text"] for line in victim.read_text().splitlines()]).tolist()
    assert len(stale) == len(now) and stale != now  # what binarizing the stale files would have routed wrongly

    with pytest.raises(InputError) as e:
        binarize(data, tmp_path / "bin", tok, splits=["train"], clusters_dir=cdir)
    msg = str(e.value)
    assert msg.startswith(f"{victim}: the cluster files in {cdir} were made from another version"), msg
    assert (
        f"python -m xlbtm.scripts.cluster --data-dir {data} --path-to-clusterer {Path(clusterer).resolve()} "
        f"--output-prefix {cdir} --split train" in msg
    )
    assert "\n" not in msg
    assert not split_dir(tmp_path / "bin", "train").exists()  # nothing binarized from the stale files

    # the rerun of that command (it redoes the one changed file), then binarize: each document in its cluster
    assign_mod.assign_corpus(data, clusterer, cdir, "train", workers=1)
    binarize(data, tmp_path / "bin", tok, splits=["train"], clusters_dir=cdir)
    for k in range(4):
        stream = TokenStream(bin_path(tmp_path / "bin", "train", k))
        got = sorted(tuple(stream.doc(i)[1:].tolist()) for i in range(stream.num_docs))
        want = sorted(tuple(ids) for ids in tok.encode_batch([t for t in texts if c.predict([t])[0] == k]))
        assert got == want, k

    # sidecars of an older xlbtm without the input's identity: warned about once, not refused
    for p in cdir.rglob("*.jsonl"):
        side = json.loads(stats_path(p).read_text())
        del side["input"]
        stats_path(p).write_text(json.dumps(side))
    caplog.clear()
    binarize(data, tmp_path / "bin2", tok, splits=["train"], clusters_dir=cdir)
    binarize(data, tmp_path / "bin2", tok, splits=["train"], clusters_dir=cdir)
    warned = [r for r in caplog.records if "do not record which version of the corpus" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]


def test_a_second_cluster_into_one_output_dir_waits_for_the_first(tmp_path, caplog):
    """Two `cluster` runs into one --output-prefix: the second would clean the first's temp files as stale and
    rewrite manifest.json under it. It waits (saying for whom), then finds the split done."""
    import logging
    import threading
    import time

    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.formats.lock import DirLock

    data = tmp_path / "d"
    _write(data / "train" / "0" / "a.jsonl", [{"text": "a", "lang": "en"}, {"text": "b", "lang": "ru"}])
    train_typological_clusterer(["en", "ru"], 2, tmp_path / "t", mode="xelm")
    out = tmp_path / "o"
    first = DirLock(out, "being clustered")
    assert first.acquire() is None  # another `cluster` holds the dir
    done = []
    with caplog.at_level(logging.INFO, logger="xlbtm"):
        t = threading.Thread(
            target=lambda: done.append(assign_mod.assign_corpus(data, tmp_path / "t", out, "train", workers=1))
        )
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and not done and not list(out.rglob("*.jsonl"))  # waiting, nothing written
        assert any("being clustered by pid" in r.getMessage() for r in caplog.records)
        first.release()
        t.join(60)
    assert done and len(dict(iter_assignments(out, "train"))) == 2
