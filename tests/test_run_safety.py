"""Runs that collide or outlive their driver, and settings a job would only find out about after queueing:
the run-dir lock, `--run local` trainers dying with their driver, `--run debug` never at a pdb prompt, and
the checks `train_experts` makes before anything is binarized or queued (`--dry-run` included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import REPO, make_demo_data


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
