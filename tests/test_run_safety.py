"""Runs that collide or outlive their driver, and settings a job would only find out about after queueing:
the run-dir lock, `--run local` trainers dying with their driver, `--run debug` never at a pdb prompt, and
the checks `train_experts` makes before anything is binarized or queued (`--dry-run` included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from train_helpers import REPO, base_cfg, launch, make_demo_data

from xlbtm.data.binarize import binarize
from xlbtm.formats.binarized import bin_path, read_binarized_manifest
from xlbtm.formats.checkpoints import latest_checkpoint
from xlbtm.formats.layout import RunLayout
from xlbtm.formats.lock import DirLock
from xlbtm.tokenizer import load_tokenizer
from xlbtm.train.experts import binarize_from_paths
from xlbtm.train.metrics import read_train_log


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    data, tok_dir, cdir = make_demo_data(root)
    return root, data, tok_dir, cdir


def _argv(demo, ser, *extra):
    root, data, tok, cdir = demo
    return [
        "--seed-model",
        "debug",
        "--tokenizer",
        str(tok),
        "--path-to-clusters-dir",
        str(cdir),
        "--num-clusters",
        "2",
        "--path-to-data",
        str(data),
        "--serialization-dir",
        str(ser),
        "--data-name",
        "demo",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--tokens-per-sample",
        "32",
        "--save-interval-updates",
        "1",
        "--validate-interval-updates",
        "0",
        "--log-interval",
        "1",
        "--binarize-workers",
        "0",
        "--train-cluster",
        "0",
        *extra,
    ]


def _exit_2(argv, capsys) -> str:
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.train_experts import main

    assert main_wrapper("train_experts", main, argv) == 2
    return capsys.readouterr().err


HOLD = """
import sys
from xlbtm.train.expert_dir import RunLock
assert RunLock(sys.argv[1]).acquire() is None
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_trainer_on_a_run_dir_stops_and_names_the_holder(demo, tmp_path, capsys):
    from xlbtm.errors import UsageError
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.loop import train_expert

    ser = tmp_path / "ser"
    assert main(_argv(demo, ser, "--run", "debug")) == 0
    run = ser / "2_clusters" / "demo.cluster0"
    assert latest_checkpoint(run).name == "step_2"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _exit_2(_argv(demo, ser, "--run", "local", "--max-steps", "4", "--dry-run"), capsys)
        assert f"cluster 0: {run} is being trained by pid {holder.pid} on " in err
        assert "another --serialization-dir" in err
        # the trainer itself (a job started anyway, e.g. submitted twice) stops before touching the run
        from xlbtm.formats.expert import read_expert_info

        cfg = TrainConfig.from_dict(dict(read_expert_info(run).data["config"], max_steps=4, keep_checkpoints=1))
        with pytest.raises(UsageError, match=f"is being trained by pid {holder.pid}"):
            train_expert(cfg)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing pruned
    finally:
        holder.kill()  # kill -9: the kernel drops the lock; no stale lock can block the rerun
        holder.wait()
    assert main(_argv(demo, ser, "--run", "debug", "--max-steps", "3")) == 0
    assert latest_checkpoint(run).name == "step_3"


def _driver_children(driver_pid: int) -> list[int]:
    """Processes started under this driver's lifeline (the submitit controller and the trainers)."""
    needle = f"XLBTM_DRIVER={driver_pid}:".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != driver_pid:
            try:
                if needle in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_local_driver_stops_its_trainers(demo, tmp_path, sig):
    ser = tmp_path / "ser"
    argv = _argv(demo, ser, "--run", "local", "--max-steps", "100000", "--save-interval-updates", "0")
    driver = subprocess.Popen(
        [sys.executable, "-m", "xlbtm.scripts.train_experts", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = ser / "2_clusters" / "demo.cluster0" / "train_log.jsonl"
    try:
        t0 = time.time()
        while not (log.is_file() and '"kind": "train"' in log.read_text()):
            assert driver.poll() is None, "the driver ended before training started"
            assert time.time() - t0 < 120, "training did not start"
            time.sleep(0.2)
        children = _driver_children(driver.pid)
        assert len(children) >= 2  # the controller and the trainer
        driver.send_signal(sig)
        driver.wait(timeout=30)
        t0 = time.time()
        while any(Path(f"/proc/{p}").exists() and b"zombie" not in _status(p) for p in children):
            assert time.time() - t0 < 20, f"orphans still running: {children}"
            time.sleep(0.2)
    finally:
        for p in [driver.pid, *_driver_children(driver.pid)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"


def test_run_debug_failure_is_raised_not_a_pdb_prompt(tmp_path, monkeypatch):
    """submitit's DebugJob opens pdb.post_mortem() on an error: a prompt nobody answers in a script or CI
    run. wait_for reports the failure instead."""
    import pdb

    from xlbtm.launch.executor import make_executor
    from xlbtm.launch.wait import JobFailedError, wait_for

    prompts = []
    monkeypatch.setattr(pdb, "post_mortem", lambda *a, **k: prompts.append(a))

    ex = make_executor("debug", tmp_path / "jobs", name="t")
    job = ex.submit(int, "not a number")
    with pytest.raises(JobFailedError) as e:
        wait_for([job], what="debug job")
    assert "invalid literal for int()" in str(e.value.failures[0].error)
    assert prompts == []


def test_settings_a_job_would_find_later_are_refused_before_queueing(demo, tmp_path, capsys):
    import shutil

    root, data, tok, cdir = demo
    ser = tmp_path / "ser"
    err = _exit_2(_argv(demo, ser, "--run", "local", "--tokens-per-sample", "5000", "--dry-run"), capsys)
    assert "--tokens-per-sample 5000 exceeds the model's max_positions" in err
    err = _exit_2(_argv(demo, ser, "--run", "local", "--seed-model", str(tmp_path / "nope")), capsys)
    assert "--seed-model" in err and "nope" in err
    err = _exit_2(_argv(demo, ser, "--run", "local", "--objective", "mlm", "--dry-run"), capsys)
    assert "--objective mlm needs a xlmr model" in err

    # an HF seed whose weights are corrupt: named before anything is binarized
    from xlbtm.formats.hf import save_hf
    from xlbtm.models import build_model, get_preset

    hf = tmp_path / "hf"
    save_hf(build_model(get_preset("debug")), get_preset("debug"), hf, tokenizer_dir=tok)
    (hf / "model.safetensors").write_bytes(b"\x00" * 64)
    err = _exit_2(_argv(demo, ser, "--run", "local", "--seed-model", str(hf)), capsys)
    assert "model.safetensors" in err and "unreadable safetensors" in err
    assert not ser.exists()  # nothing binarized, nothing queued

    # a resume with another tokenizer is refused by the driver, not by the job after it was queued
    from xlbtm.scripts.train_experts import main
    from xlbtm.tokenizer import train_sentencepiece

    assert main(_argv(demo, ser, "--run", "debug", "--max-steps", "1")) == 0
    other = tmp_path / "tok2"
    from xlbtm.corpus import Corpus

    train_sentencepiece([d.text for d in Corpus(data).iter_documents("train")], other, vocab_size=280)
    err = _exit_2(_argv(demo, ser, "--run", "local", "--tokenizer", str(other), "--dry-run"), capsys)
    assert "expert.json was started with the tokenizer" in err and "resume with that --tokenizer" in err
    shutil.rmtree(other)


def _read_until(proc, needle: str, timeout: float = 120) -> str:
    """The driver's output up to the first line holding `needle` (stdout and stderr merged); fails when the
    driver ends first or takes longer than `timeout`."""
    seen: list[str] = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"ended (rc {proc.wait()}) before printing {needle!r}:\n" + "".join(seen)[-3000:])
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"no {needle!r} within {timeout} s:\n" + "".join(seen)[-3000:])


def test_two_train_experts_into_one_serialization_dir_share_its_binarization(demo, tmp_path, capsys):
    """Two train_experts (clusters 0 and 1) started together into one --serialization-dir: they share its
    binarized data, so neither may write it while another does (the same `.tmp` names: one run died with a
    FileNotFoundError, or a stream was cut). Here the binarized dir's lock is held by this test, so both
    drivers are deterministically at the door together: each says whom it waits for, and once the lock is
    free one binarizes, the other reuses its data, and both experts train on intact streams. A third run
    for cluster 0 meanwhile stops with one line naming the run that is setting it up."""
    root, data, tok, cdir = demo
    ser = tmp_path / "ser"
    layout = RunLayout.of(ser, 2)
    bin_dir = layout.binarized_dir("demo", load_tokenizer(tok).fingerprint)
    lock = DirLock(bin_dir, "being binarized")
    assert lock.acquire() is None
    drivers = {}
    try:
        for k in (0, 1):
            argv = _argv(demo, ser, "--run", "debug", "--train-cluster", str(k))
            drivers[k] = subprocess.Popen(
                [sys.executable, "-m", "xlbtm.scripts.train_experts", *argv],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        for d in drivers.values():
            out = _read_until(d, "waiting:")
            assert f"waiting: {bin_dir} is being binarized by pid {os.getpid()} on " in out
            assert " since " in out
        assert [p.name for p in bin_dir.iterdir()] == [".lock"]  # nobody wrote a byte while it was held
        # cluster 0 is claimed by its (waiting) driver: a third run for it stops at once, naming that driver
        err = _exit_2(_argv(demo, ser, "--run", "debug", "--train-cluster", "0"), capsys)
        assert f"cluster 0: {layout.run_dir('demo', 0)} is being set up for training" in err
        assert f"by pid {drivers[0].pid} on " in err and len(err.strip().splitlines()) == 1
    finally:
        lock.release()
        outs = {}
        for k, d in drivers.items():
            try:
                outs[k] = d.communicate(timeout=240)[0]
            finally:
                d.kill()
    for k, d in drivers.items():
        assert d.returncode == 0, outs[k][-3000:]
        assert "Traceback" not in outs[k]
        assert latest_checkpoint(layout.run_dir("demo", k)).name == "step_2"
    # intact: the streams are exactly what one binarization alone writes, and one run reused the other's
    ref = binarize(data, tmp_path / "ref", load_tokenizer(tok), clusters_dir=cdir, workers=0)
    assert read_binarized_manifest(bin_dir)["splits"] == ref.manifest["splits"]
    for split in ("train", "valid"):
        for k in (0, 1):
            assert bin_path(bin_dir, split, k).read_bytes() == bin_path(tmp_path / "ref", split, k).read_bytes()
    assert not [p for p in bin_dir.rglob("*.tmp")]
    assert sum("binarized data up to date" in out for out in outs.values()) == 1


def test_a_run_killed_before_its_first_checkpoint_leaves_no_steps_in_the_rerun_log(tmp_path):
    """kill -9 before the first checkpoint: the rerun starts from the seed, and its train_log.jsonl must not
    keep the dead run's records (steps 1..n logged twice, the later ones from a run that no longer exists)."""
    data, tok, cdir = make_demo_data(tmp_path, n_train=40, n_valid=8)
    binarize(data, tmp_path / "bin", load_tokenizer(tok), clusters_dir=cdir, workers=0)
    run = tmp_path / "run"
    cfg = base_cfg(run, tmp_path / "bin", validate_interval_updates=2, max_valid_samples=4, validate_at_start=True)
    (proc,) = launch(1, dict(cfg, max_steps=100000), wait=False)
    try:
        t0 = time.time()
        while not any(r.get("step", 0) >= 6 for r in read_train_log(run)):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() - t0 < 120, "training did not start"
            time.sleep(0.05)
    finally:
        proc.kill()  # kill -9, no checkpoint written yet
        proc.wait()
    assert not (run / "checkpoints").is_dir() or not any((run / "checkpoints").iterdir())
    launch(1, dict(cfg, max_steps=3))
    log = [(r["kind"], r["step"]) for r in read_train_log(run)]
    assert log == [("valid", 0), ("train", 1), ("train", 2), ("valid", 2), ("train", 3), ("valid", 3)]


def test_a_waiting_lock_says_whom_it_waits_for_then_and_every_while(tmp_path):
    """`DirLock.wait` names the holder at once and again every `every_s` (a run that seems stuck says what it
    waits for); a dir made only to hold the lock is gone again after a failure (`held` discards it)."""
    first, second = DirLock(tmp_path / "d", "being binarized"), DirLock(tmp_path / "d", "being binarized")
    assert first.acquire() is None  # flock: a second open file of this process is refused like another process
    timer = threading.Timer(0.6, first.release)
    timer.start()
    lines: list[str] = []
    second.wait(lines.append, every_s=0.2, poll_s=0.05)
    timer.join()
    assert lines[0].startswith(f"waiting: {tmp_path / 'd'} is being binarized by pid {os.getpid()} on ")
    assert any(line.startswith("still waiting (") for line in lines[1:-1])
    assert "lock taken after waiting" in lines[-1]
    second.release()

    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError):
        with DirLock(fresh).held(lines.append):
            raise ValueError("binarizing failed before writing anything")
    assert not fresh.exists()


def test_a_slurm_binarize_job_holds_the_lock_itself(demo, tmp_path):
    """`--run slurm` binarizes in a job, which must hold the binarized dir's lock itself (the driver may be
    stopped while the job goes on): the job's entry point waits for a holder and writes nothing meanwhile."""
    root, data, tok, cdir = demo
    out = tmp_path / "bin"
    lock = DirLock(out, "being binarized")
    assert lock.acquire() is None
    done: list[dict] = []
    job = threading.Thread(
        target=lambda: done.append(
            binarize_from_paths(str(data), str(out), str(tok), str(cdir), 2, ["train"], 0, False)
        )
    )
    job.start()
    try:
        time.sleep(1.5)
        assert job.is_alive() and [p.name for p in out.iterdir()] == [".lock"]
    finally:
        lock.release()
        job.join(timeout=120)
    assert (
        done and done[0]["splits"]["train"]["documents"] == read_binarized_manifest(out)["splits"]["train"]["documents"]
    )
