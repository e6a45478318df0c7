"""Trainer behaviour: schedule, expert dirs, SIGKILL/SIGUSR1 resume, MLM, train_experts CLI (debug/local)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
from train_helpers import base_cfg, final_weights, launch, make_demo_data, result_of, train_losses


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xlbtm.data.binarize import binarize
    from xlbtm.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("train")
    data, tok_dir, cdir = make_demo_data(root)
    binarize(data, root / "bin", load_tokenizer(tok_dir), clusters_dir=cdir, workers=0)
    return root, data, tok_dir, cdir


# ------------------------------------------------------------------------------------------------- units


def test_lr_schedule_warmup_then_polynomial_decay():
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.optim import lr_at

    cfg = TrainConfig(
        run_dir="r",
        data_dir="d",
        seed_model="debug",
        learning_rate=1.0,
        end_learning_rate=0.1,
        warmup_updates=4,
        max_steps=14,
        power=1.0,
    )
    assert [lr_at(s, cfg) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_at(9, cfg) == pytest.approx(0.55)  # halfway through the decay
    assert lr_at(14, cfg) == pytest.approx(0.1) and lr_at(20, cfg) == pytest.approx(0.1)
    cfg.power = 2.0
    assert lr_at(9, cfg) == pytest.approx(0.9 * 0.25 + 0.1)


def test_optimizer_is_adamw_with_cbtm_betas_and_no_decay_on_vectors():
    from xlbtm.models import build_model, get_preset
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.optim import build_optimizer

    cfg = TrainConfig(run_dir="r", data_dir="d", seed_model="debug", weight_decay=0.1)
    opt = build_optimizer(build_model(get_preset("debug")), cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-6
    decay, no_decay = opt.param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_expert_info_roundtrip_and_order_from_expert_json(tmp_path):
    from xlbtm.errors import InputError
    from xlbtm.formats.expert import ExpertInfo, read_expert_info, write_expert_info
    from xlbtm.train.expert_dir import expert_run_dir, find_expert_dirs

    dirs = []
    for k in (10, 2, 1):  # folder names sort as 1, 10, 2; expert order must be 1, 2, 10
        d = expert_run_dir(tmp_path, 12, "c4", k)
        write_expert_info(
            d,
            ExpertInfo(
                cluster=k,
                num_clusters=12,
                clusterer_fingerprint="fp",
                objective="clm",
                model_args={"arch": "xglm"},
                tokenizer="/t",
                tokenizer_fingerprint="tf",
                seed_model="debug",
                run_name="c4",
            ),
        )
        dirs.append(d)
    assert d == tmp_path / "12_clusters" / "c4.cluster1"
    assert [read_expert_info(p).cluster for p in find_expert_dirs(tmp_path)] == [1, 2, 10]
    assert json.loads((d / "expert.json").read_text())["format"] == "xlbtm-expert/1"
    (d / "expert.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="expert.json"):
        read_expert_info(d)


# ------------------------------------------------------------------------------------ kill / preempt


def _wait_for_step(run_dir, step, procs, timeout=120):
    log = run_dir / "train_log.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.is_file():
            steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return max(steps)
        if any(p.poll() is not None for p in procs):
            raise AssertionError("run ended before it could be interrupted:\n" + procs[0].stdout.read()[-2000:])
        time.sleep(0.01)
    raise AssertionError("timed out waiting for training steps")


def _wait_for_save_in_flight(run_dir, procs, timeout=60):
    """The temp dir of a checkpoint being written (`.step_<n>.tmp`, n >= 10), polled every millisecond."""
    root = run_dir / "checkpoints"
    t0 = time.time()
    while time.time() - t0 < timeout:
        for p in root.glob(".step_*.tmp"):
            if int(p.name[6:-4]) >= 10:
                return p
        if any(p.poll() is not None for p in procs):
            raise AssertionError("run ended before a save could be interrupted")
        time.sleep(0.001)
    raise AssertionError("timed out waiting for a save in flight")


@pytest.fixture(scope="module")
def uninterrupted(demo, tmp_path_factory):
    """The reference of the resume tests; dropout 0.1, so only an exact RNG restore resumes bitwise."""
    root = demo[0]
    run = tmp_path_factory.mktemp("full") / "run"
    launch(1, base_cfg(run, root / "bin", max_steps=30, dropout=0.1, save_interval_updates=5))
    return run


@pytest.mark.slow  # three launches (reference, killed, rerun)
def test_sigkill_then_rerun_equals_uninterrupted_run(demo, uninterrupted, tmp_path):
    from xlbtm.formats.checkpoints import latest_checkpoint

    root = demo[0]
    run = tmp_path / "killed"
    cfg = base_cfg(run, root / "bin", max_steps=30, dropout=0.1, save_interval_updates=5)
    procs = launch(1, cfg, wait=False)
    _wait_for_step(run, 7, procs)
    # land the kill inside a (background) save: as soon as the next checkpoint's temp dir appears
    in_flight = _wait_for_save_in_flight(run, procs)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    assert procs[0].returncode == -signal.SIGKILL
    ck = latest_checkpoint(run)
    assert ck is not None and 5 <= int(ck.name[5:]) < 30  # killed mid-way, after at least one save
    # the save was cut short (it takes far longer than the 1 ms between seeing its temp dir and the kill):
    # `latest` names an older, complete step and the cut one was never published
    assert in_flight.exists() and int(ck.name[5:]) < int(in_flight.name[6:-4])
    assert not (run / "checkpoints" / in_flight.name[1:-4]).exists()
    _, outs = launch(1, cfg)  # the same command again
    assert result_of(outs[0])["status"] == "completed" and result_of(outs[0])["step"] == 30
    wa, wb = final_weights(run), final_weights(uninterrupted)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0, msg=k)  # bitwise: deterministic on CPU
    from xlbtm.train.metrics import read_train_log

    log = read_train_log(run)
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 31))  # killed run's extra steps dropped
    assert train_losses(run) == train_losses(uninterrupted)


@pytest.mark.slow  # two launches
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(demo, uninterrupted, tmp_path):
    """A disk fault truncated the newest checkpoint's .metadata: the rerun resumes from the one before it (with a
    warning) and still ends bitwise equal to the uninterrupted run."""
    root = demo[0]
    run = tmp_path / "faulty"
    cfg = base_cfg(run, root / "bin", max_steps=30, dropout=0.1, save_interval_updates=5)
    launch(1, cfg)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_30"
    meta = run / "checkpoints" / "step_30" / ".metadata"
    meta.write_bytes(meta.read_bytes()[:100])
    _, outs = launch(1, cfg)
    assert "trying an older checkpoint" in outs[0] and "resumed from" in outs[0] and "step_25" in outs[0]
    assert result_of(outs[0])["step"] == 30
    wa, wb = final_weights(run), final_weights(uninterrupted)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0, msg=k)


def test_sigusr1_saves_and_exits_resumably(demo, uninterrupted, tmp_path):
    from xlbtm.formats.checkpoints import latest_checkpoint

    root = demo[0]
    run = tmp_path / "preempted"
    cfg = base_cfg(run, root / "bin", max_steps=30, dropout=0.1, save_interval_updates=1000)  # no periodic saves
    procs = launch(1, cfg, wait=False)
    _wait_for_step(run, 3, procs)
    procs[0].send_signal(signal.SIGUSR1)
    out, _ = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 0, out[-2000:]
    r = result_of(out)
    assert r["status"] == "preempted" and 3 <= r["step"] < 30
    assert latest_checkpoint(run).name == f"step_{r['step']}"  # saved exactly where it stopped
    _, outs = launch(1, cfg)
    assert result_of(outs[0])["step"] == 30
    wa, wb = final_weights(run), final_weights(uninterrupted)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0, msg=k)
    assert train_losses(run)[30] == train_losses(uninterrupted)[30]


def test_mlm_expert_trains(demo, tmp_path):
    root = demo[0]
    run = tmp_path / "mlm"
    _, outs = launch(
        1,
        base_cfg(
            run,
            root / "bin",
            seed_model="debug-xlmr",
            objective="mlm",
            max_steps=12,
            validate_interval_updates=12,
            learning_rate=1e-2,
        ),
    )
    losses = train_losses(run)
    assert losses[12] < losses[1]
    from xlbtm.formats.expert import read_expert_info

    info = read_expert_info(run)
    assert info.objective == "mlm" and info.model_args["arch"] == "xlmr"


# ------------------------------------------------------------------------------------- train_experts


def _argv(root, data, tok, cdir, ser, *extra):
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
        "6",
        "--batch-size",
        "4",
        "--tokens-per-sample",
        "32",
        "--learning-rate",
        "3e-3",
        "--save-interval-updates",
        "3",
        "--validate-interval-updates",
        "3",
        "--log-interval",
        "1",
        "--binarize-workers",
        "0",
        *extra,
    ]


def test_waiting_driver_shows_each_running_experts_step_and_loss(demo, tmp_path, monkeypatch, caplog):
    """--run local: the driver's own output reads step / total, loss and an ETA from the job's train_log."""
    import logging
    import re

    from xlbtm.scripts.train_experts import main

    root, data, tok, cdir = demo
    monkeypatch.setenv("XLBTM_POLL_S", "0.2")
    monkeypatch.setenv("XLBTM_PROGRESS_EVERY_S", "0")
    argv = _argv(root, data, tok, cdir, tmp_path / "ser", "--run", "local", "--num-gpus", "1", "--train-cluster", "0")
    argv[argv.index("--max-steps") + 1] = "80"
    with caplog.at_level(logging.INFO, logger="xlbtm"):
        assert main(argv) == 0
    seen = [
        m.groups()
        for r in caplog.records
        if (m := re.search(r"cluster 0: step (\d+)/80 \[[#-]+\] \d+% \| loss (\d+\.\d+) .*\| ETA", r.getMessage()))
    ]
    assert seen and int(seen[-1][0]) > 0, [r.getMessage() for r in caplog.records][-20:]


def test_train_experts_dry_run_prints_plan_and_writes_nothing(demo, tmp_path, capsys):
    from xlbtm.scripts.train_experts import main

    root, data, tok, cdir = demo
    ser = tmp_path / "ser"
    assert (
        main(
            _argv(root, data, tok, cdir, ser, "--run", "local", "--num-gpus", "2", "--train-cluster", "1", "--dry-run")
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 expert(s) of K=2" in out and "2 tasks, dp=2 tp=1" in out
    assert str(ser / "2_clusters" / "demo.cluster1") in out and "demo.cluster0" not in out
    assert not ser.exists()


def test_train_experts_request_defaults_are_the_flag_defaults():
    """The library request and the CLI agree on every default (a drifted default would change the run)."""
    from xlbtm.scripts.train_experts import build_parser
    from xlbtm.train.plan import TrainExpertsRequest

    req = TrainExpertsRequest.from_args(
        build_parser().parse_args(
            [
                "--run",
                "debug",
                "--seed-model",
                "debug",
                "--num-clusters",
                "1",
                "--path-to-data",
                "D",
                "--serialization-dir",
                "S",
                "--max-steps",
                "3",
            ]
        )
    )
    assert req == TrainExpertsRequest(
        run="debug",
        seed_model="debug",
        num_clusters=1,
        path_to_data="D",
        serialization_dir="S",
        max_steps=3,
        binarize_workers=req.binarize_workers,
        site=req.site,
    )


def test_plan_experts_and_describe_plan_without_the_cli(demo, tmp_path, monkeypatch):
    from xlbtm.errors import UsageError
    from xlbtm.train.experts import all_completed, describe_results
    from xlbtm.train.plan import TrainExpertsRequest, describe_plan, plan_experts

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    root, data, tok, cdir = demo
    req = TrainExpertsRequest(
        run="local",
        seed_model="debug",
        num_clusters=2,
        path_to_data=str(data),
        serialization_dir=str(tmp_path / "ser"),
        max_steps=5,
        tokenizer=str(tok),
        path_to_clusters_dir=str(cdir),
        data_name="demo",
        train_cluster="0-1",
        num_gpus=4,
        tensor_parallel_size=2,
        batch_size=3,
        update_freq=2,
        tokens_per_sample=16,
        device="cpu",
    )
    plan = plan_experts(req)
    assert [e.cluster for e in plan.experts] == [0, 1] and plan.slots == [None, None]
    assert plan.objective == "clm" and plan.clusterer_fp is not None and plan.dp == 2
    cfg = plan.experts[1].cfg
    assert (cfg.cluster, cfg.num_clusters, cfg.tensor_parallel_size, cfg.max_steps) == (1, 2, 2, 5)
    assert cfg.run_dir == str((tmp_path / "ser" / "2_clusters" / "demo.cluster1").resolve())
    assert cfg.data_dir.endswith(plan.tokenizer.fingerprint[:12]) and cfg.clusterer_fingerprint == plan.clusterer_fp
    lines = describe_plan(plan)
    assert "4 tasks, dp=2 tp=2; 12 samples x 16 tokens per step = 192 tokens/step, 5 steps" in lines[3]
    assert lines[5] == "  local: 2 expert(s) at a time (8 CPU cores)" and len(lines) == 8
    assert not (tmp_path / "ser").exists()  # planning writes nothing

    res = [{"status": "completed", "step": 5, "valid_loss": 2.5}, {"status": "failed", "step": 2}]
    assert describe_results(plan, res)[0].startswith("cluster 0: completed at step 5, valid loss 2.500 (base 2)")
    assert not all_completed(res) and all_completed(res[:1])
    req.tensor_parallel_size = 3
    with pytest.raises(UsageError, match="--tensor-parallel-size 3"):
        plan_experts(req)


def test_local_runs_in_waves_sized_by_the_machine(monkeypatch):
    from xlbtm.train.plan import LaunchSpec, local_slots

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert len(local_slots(LaunchSpec(run="local", num_nodes=1, num_gpus=2, device="cpu"))) == 4
    assert len(local_slots(LaunchSpec(run="local", num_nodes=1, num_gpus=16, device="cpu"))) == 1
    monkeypatch.setattr("torch.cuda.device_count", lambda: 8)
    assert local_slots(LaunchSpec(run="local", num_nodes=1, num_gpus=4, device="cuda")) == [(0, 1, 2, 3), (4, 5, 6, 7)]


@pytest.mark.parametrize(
    "bad, msg",
    [
        (["--tensor-parallel-size", "3", "--num-gpus", "2"], "--tensor-parallel-size"),
        (["--train-cluster", "5"], "--train-cluster"),
        (["--num-clusters", "3"], "--num-clusters"),
        (["--train-cluster", ""], "--train-cluster is empty"),
        (["--batch-size", "0"], "--batch-size"),
        (["--tokens-per-sample", "0"], "--tokens-per-sample"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--step-allocation", "proportional", "--max-steps", "0"], "--max-steps"),
        (["--tensor-parallel-size", "3", "--num-gpus", "3", "--tokens-per-sample", "32"], "divisible by --tensor-par"),
    ],
)
def test_train_experts_bad_flags_exit_2(demo, tmp_path, capsys, bad, msg):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.train_experts import main

    root, data, tok, cdir = demo
    argv = _argv(root, data, tok, cdir, tmp_path / "s", "--run", "local", "--dry-run")
    if "--num-clusters" in bad:
        i = argv.index("--num-clusters")
        argv[i + 1] = bad[1]
        bad = []
    assert main_wrapper("train_experts", main, argv + bad) == 2
    assert msg in capsys.readouterr().err


def test_train_experts_debug_dense_baseline_and_resume(demo, tmp_path, capsys):
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.scripts.train_experts import main

    root, data, tok, cdir = demo
    ser = tmp_path / "ser"
    argv = _argv(root, data, tok, cdir, ser, "--run", "debug")
    argv[argv.index("--num-clusters") + 1] = "1"
    i = argv.index("--path-to-clusters-dir")
    del argv[i : i + 2]
    assert main(argv) == 0
    run = ser / "1_clusters" / "demo.cluster0"
    info = read_expert_info(run)
    assert info.num_clusters == 1 and info.clusterer_fingerprint is None and info.cluster == 0
    assert latest_checkpoint(run).name == "step_6"
    assert "completed at step 6" in capsys.readouterr().out
    assert main(argv) == 0  # rerun: resumes from step 6, nothing left to do
    assert "resumes from step_6" in capsys.readouterr().out
    # the same run dir asked for another experiment: refused before anything runs, not "resumed" for 0 steps
    import shutil

    from xlbtm.cli import main_wrapper

    other = tmp_path / "other_corpus"
    shutil.copytree(data, other)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*") if p.name != ".lock")  # (probed)
    for flag, value, what in (("--path-to-data", other, "corpus"), ("--seed-model", "xglm-564M", "seed")):
        changed = list(argv)
        changed[changed.index(flag) + 1] = str(value)
        assert main_wrapper("train_experts", main, changed) == 2
        err = capsys.readouterr().err
        assert f"another {what} ({flag} was" in err and len(err.strip().splitlines()) == 1, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*") if p.name != ".lock") == before
    longer = list(argv)
    longer[longer.index("--max-steps") + 1] = "8"  # extending a run is a resume
    assert main(longer) == 0 and latest_checkpoint(run).name == "step_8"
    import torch.distributed as dist

    assert not dist.is_initialized()  # in-process training leaves no process group behind


@pytest.mark.slow
def test_train_experts_local_two_experts_on_manpages(manpages_dir, tmp_path, capsys):
    """Real corpus, 2 experts (by language group), tiny model, one local submitit job per expert."""
    from xlbtm.corpus import Corpus
    from xlbtm.formats.clusters import cluster_file_path, write_cluster_file, write_manifest
    from xlbtm.scripts.train_experts import main
    from xlbtm.tokenizer import train_sentencepiece
    from xlbtm.train.expert_dir import find_expert_dirs, read_expert_info
    from xlbtm.train.metrics import read_train_log

    corpus = Corpus(manpages_dir)
    tok = tmp_path / "tok"
    train_sentencepiece(
        [d.text[:2000] for _, d in zip(range(300), corpus.iter_documents("train"))], tok, vocab_size=400
    )
    cdir = tmp_path / "clusters"
    for split in ("train", "valid"):
        for f in corpus.files(split):
            write_cluster_file(
                cluster_file_path(cdir, corpus.rel(f)),
                ((d.sp_id, 0 if d.lang in ("en", "de", "fr", "es", "it") else 1) for d in corpus.iter_file(f)),
            )
    write_manifest(cdir, {"format": "xlbtm-clusters/1", "fingerprint": "by-lang", "num_clusters": 2, "kind": "test"})
    ser = tmp_path / "ser"
    argv = [
        "--run",
        "local",
        "--seed-model",
        "debug",
        "--tokenizer",
        str(tok),
        "--path-to-clusters-dir",
        str(cdir),
        "--num-clusters",
        "2",
        "--path-to-data",
        str(manpages_dir),
        "--serialization-dir",
        str(ser),
        "--data-name",
        "manpages",
        "--max-steps",
        "30",
        "--batch-size",
        "8",
        "--tokens-per-sample",
        "64",
        "--learning-rate",
        "3e-3",
        "--warmup-updates",
        "3",
        "--validate-interval-updates",
        "30",
        "--save-interval-updates",
        "15",
        "--max-valid-steps",  # c-BTM's name for the sample cap
        "64",
        "--validate-at-start",
        "--num-gpus",
        "1",
        "--binarize-workers",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "logs " in out and "_log.out" in out  # status lines say where the logs are
    dirs = find_expert_dirs(ser)
    assert [read_expert_info(d).cluster for d in dirs] == [0, 1]
    for d in dirs:
        valid = [r for r in read_train_log(d) if r["kind"] == "valid"]
        assert [r["step"] for r in valid] == [0, 30]
        assert valid[-1]["loss"] < valid[0]["loss"] - 0.5, valid


# ------------------------------------------------------------------------------------------------ SLURM


def _slurm_argv(demo, ser, *extra):
    root, data, tok, cdir = demo
    return [
        "--run",
        "slurm",
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
        "--num-gpus",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.slurm
@pytest.mark.slow
def test_train_experts_slurm_two_experts_two_tasks(demo, tmp_path, slurm_cluster, monkeypatch, capsys):
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.expert_dir import find_expert_dirs, read_expert_info

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_cluster.partition)
    ser = tmp_path / "ser"
    assert (
        main(
            _slurm_argv(
                demo, ser, "--max-steps", "4", "--save-interval-updates", "2", "--validate-interval-updates", "4"
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "binarize: job" in out  # tokenizing runs as a SLURM job, not on the submitting node
    assert out.count("completed at step 4") == 2
    dirs = find_expert_dirs(ser)
    assert [read_expert_info(d).cluster for d in dirs] == [0, 1]
    for d in dirs:
        assert read_expert_info(d).data["dp"] == 2  # 2 tasks formed one FSDP group per expert
        assert latest_checkpoint(d).name == "step_4"


@pytest.mark.slurm
@pytest.mark.slow
def test_train_experts_slurm_requeue_resumes(demo, tmp_path, slurm_cluster, monkeypatch, capsys):
    """`scontrol requeue` (SIGTERM) mid-run: the ranks agree, save, exit; SLURM reruns the job, which resumes."""
    import re

    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.metrics import read_train_log

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_cluster.partition)
    ser = tmp_path / "ser"
    steps = 150
    assert (
        main(
            _slurm_argv(
                demo,
                ser,
                "--max-steps",
                str(steps),
                "--save-interval-updates",
                "1000",
                "--validate-interval-updates",
                "0",
                "--train-cluster",
                "1",
                "--no-wait",
            )
        )
        == 0
    )
    job_id = re.search(r"cluster 1: job (\S+);", capsys.readouterr().out).group(1)
    run = ser / "2_clusters" / "demo.cluster1"
    t0 = time.time()
    while not any(r.get("step", 0) >= 5 for r in read_train_log(run)):
        assert time.time() - t0 < 180, "job did not start training"
        time.sleep(0.5)
    slurm_cluster.requeue(job_id)
    t0 = time.time()
    while True:
        ck = latest_checkpoint(run)
        if ck is not None and ck.name == f"step_{steps}":
            break
        assert time.time() - t0 < 300, f"requeued job did not finish (state {slurm_cluster.state(job_id)})"
        time.sleep(1)
    log = read_train_log(run)
    resumes = [r for r in log if r["kind"] == "resume"]
    assert len(resumes) == 1 and 5 <= resumes[0]["step"] < steps  # saved on SIGTERM, not at an interval
    train_steps = [r["step"] for r in log if r["kind"] == "train"]
    assert train_steps == list(range(1, steps + 1))  # nothing lost, nothing repeated


def test_branch_from_hf_seed_uses_its_weights_and_tokenizer(demo, tmp_path, capsys):
    """An HF seed dir carries its tokenizer (no --tokenizer needed); with lr 0 the expert equals the seed."""
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.formats.hf import save_hf
    from xlbtm.models import build_model, get_preset
    from xlbtm.scripts.train_experts import main
    from xlbtm.tokenizer import load_tokenizer

    root, data, tok, cdir = demo
    torch.manual_seed(123)
    args = get_preset("debug", vocab_size=load_tokenizer(tok).vocab_size, dropout=0.3)
    seed = build_model(args)
    save_hf(seed, args, tmp_path / "seed", tokenizer_dir=tok)
    argv = _argv(
        root,
        data,
        tok,
        cdir,
        tmp_path / "ser",
        "--run",
        "debug",
        "--train-cluster",
        "1",
        "--learning-rate",
        "0",
        "--dropout",
        "0",
    )
    argv[argv.index("--seed-model") + 1] = str(tmp_path / "seed")
    i = argv.index("--tokenizer")
    del argv[i : i + 2]
    assert main(argv) == 0
    run = tmp_path / "ser" / "2_clusters" / "demo.cluster1"
    info = read_expert_info(run)
    assert info.tokenizer == str((tmp_path / "seed").resolve()) and info.objective == "clm"
    assert info.model_args["dropout"] == 0.0  # --dropout overrides the seed's 0.3
    got = final_weights(run)
    assert set(got) == set(seed.state_dict())
    for k, v in seed.state_dict().items():
        torch.testing.assert_close(got[k], v, atol=0, rtol=0, msg=k)


# ------------------------------------------------------------------------------------- Trainer pieces


def test_trainer_pieces_alone_equal_a_hand_written_step(demo, tmp_path):
    """build_data / build_model / build_optimizer / train_step / validate / state_dict, called one by one
    in this process: one train_step equals a hand-written step (mean CE over targets, clip, AdamW) on a copy
    of the model, and validate equals the hand-computed validation loss."""
    import copy

    import torch.nn.functional as F

    from xlbtm.data.dataset import Sampler, collate
    from xlbtm.launch.distributed import destroy_distributed, init_distributed
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.optim import lr_at
    from xlbtm.train.trainer import Trainer

    root = demo[0]
    cfg = TrainConfig.from_dict(
        base_cfg(tmp_path / "run", root / "bin", clip_norm=0.05, max_valid_samples=6, warmup_updates=0)
    )
    init_distributed(device="cpu", init_single=True)
    try:
        t = Trainer(cfg, 0, 1, torch.device("cpu"))
        t.run_dir.mkdir(parents=True)
        t.build_data()
        t.build_model()
        t.build_optimizer()
        assert (t.run_dir / "expert.json").is_file() and t.state_dict() == {"step": 0, "position": 0, "seed": 1}
        ref = copy.deepcopy(t.model)
        micro = t.step_batches(0)
        gnorm = float(t.train_step(micro))
        assert t.state_dict() == {"step": 1, "position": 4, "seed": 1}

        ((x, y),) = micro
        loss = F.cross_entropy(ref(x, None).view(-1, ref.args.vocab_size), y.view(-1), ignore_index=-100)
        loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.clip_norm)
        assert abs(gnorm - float(ref_norm)) < 1e-5 * float(ref_norm) and gnorm > cfg.clip_norm  # clipping active
        decay = [p for p in ref.parameters() if p.ndim >= 2]
        rest = [p for p in ref.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=lr_at(1, cfg),
            betas=cfg.adam_betas,
            eps=cfg.adam_eps,
        )
        opt.step()
        got = dict(t.model.named_parameters())
        for name, p in ref.named_parameters():
            torch.testing.assert_close(got[name].detach(), p.detach(), atol=1e-6, rtol=1e-5, msg=name)

        vx, vy = collate(t.valid_ds, Sampler(len(t.valid_ds), 0, shuffle=False), list(range(4)))
        vx2, vy2 = collate(t.valid_ds, Sampler(len(t.valid_ds), 0, shuffle=False), [4, 5])
        t.model.eval()
        with torch.no_grad():
            total = sum(
                F.cross_entropy(
                    t.model(a, None).view(-1, ref.args.vocab_size), b.view(-1), ignore_index=-100, reduction="sum"
                )
                for a, b in ((vx, vy), (vx2, vy2))
            )
        t.model.train()
        n = int((vy != -100).sum() + (vy2 != -100).sum())
        assert abs(t.validate() - float(total) / n) < 1e-5
        # validation forwards are sized in tokens (--batch-tokens-valid), not by the training batch; same loss
        shapes = []
        inner = t.batch_loss
        t.batch_loss = lambda batch: shapes.append(tuple(batch[0].shape)) or inner(batch)
        assert shapes == [] and t.valid_batch_size() == 4 * cfg.batch_size  # default: 4x the training micro-batch
        one = cfg.tokens_per_sample
        for tokens, want in ((None, [6]), (one, [1] * 6), (4 * one + 5, [4, 2])):
            shapes.clear()
            t.cfg.batch_tokens_valid = tokens
            assert abs(t.validate() - float(total) / n) < 1e-5
            assert [s[0] for s in shapes] == want, (tokens, shapes)
        assert t.valid_tokens_per_s > 0
        t.batch_loss = inner

        t.load_state_dict({"step": 7, "position": 28, "seed": 1})
        assert t.state_dict()["step"] == 7 and t.step_batches(28)[0][0].shape == x.shape
    finally:
        destroy_distributed()


def test_prefetcher_yields_in_order_ahead_and_hands_over_errors():
    import threading

    from xlbtm.data.prefetch import Prefetcher

    seen = []

    def make(position):
        seen.append(position)
        if position == 40:
            raise ValueError("bad batch at 40")
        return [position]

    p = Prefetcher(make, 10, 10, depth=2)
    assert [p.next(), p.next()] == [[10], [20]]
    t0 = time.time()
    while len(seen) < 4 and time.time() - t0 < 5:  # it works ahead of the consumer, at most `depth` steps
        time.sleep(0.01)
    assert seen[:4] == [10, 20, 30, 40]
    assert p.next() == [30]
    with pytest.raises(ValueError, match="bad batch at 40"):
        p.next()
    p.close()
    q = Prefetcher(lambda pos: [pos], 0, 1, depth=1)
    assert q.next() == [0]
    q.close()
    assert not any(th.name == "xlbtm-prefetch" and th.is_alive() for th in threading.enumerate())


def test_training_flags_reach_the_expert_config_by_name(demo, tmp_path):
    """One source of defaults (TrainConfig -> request -> flags) and every training flag passed through by name:
    AdamW betas / eps and the LR power are settable, an unknown config key is refused, not dropped."""
    import dataclasses

    from xlbtm.errors import UsageError
    from xlbtm.scripts.train_experts import build_parser
    from xlbtm.train.config import TrainConfig, TrainingSettings
    from xlbtm.train.plan import TrainExpertsRequest, plan_experts

    shared = {f.name for f in dataclasses.fields(TrainingSettings)}
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared <= {f.name for f in dataclasses.fields(TrainExpertsRequest)}
    assert {"learning_rate", "adam_betas", "adam_eps", "power", "sync_checkpoints"} <= shared
    # the flags are generated from TrainingSettings: every flag name users type stays exactly as it was
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    assert {
        "--train-subset",
        "--valid-subset",
        "--learning-rate",
        "--lr",
        "--end-learning-rate",
        "--warmup-updates",
        "--max-steps",
        "--max-update",
        "--batch-size",
        "--update-freq",
        "--tokens-per-sample",
        "--weight-decay",
        "--clip-norm",
        "--dropout",
        "--seed",
        "--activation-checkpointing",
        "--compile",
        "--save-interval-updates",
        "--validate-interval-updates",
        "--max-valid-samples",
        "--keep-checkpoints",
        "--log-interval",
        "--tensorboard",
        "--tensor-parallel-size",
        "--model-parallel",
        "--binarize-workers",
        "--num-nodes",
        "--num-gpus",
        "--step-allocation",
        "--sync-checkpoints",
        "--adam-betas",
        "--adam-eps",
        "--power",
        "--precision",
        "--loss-chunk-mib",
    } <= flags
    root, data, tok, cdir = demo
    args = build_parser().parse_args(
        _argv(
            root,
            data,
            tok,
            cdir,
            tmp_path / "ser",
            "--run",
            "local",
            "--adam-betas",
            "(0.9, 0.98)",
            "--adam-eps",
            "1e-8",
            "--power",
            "2",
            "--sync-checkpoints",
            "--weight-decay",
            "0.01",
            "--precision",
            "bf16-mixed",
            "--loss-chunk-mib",
            "32",
        )
    )
    cfg = plan_experts(TrainExpertsRequest.from_args(args)).experts[0].cfg
    assert cfg.loss_chunk_mib == 32
    assert (cfg.adam_betas, cfg.adam_eps, cfg.power, cfg.sync_checkpoints, cfg.weight_decay, cfg.precision) == (
        (0.9, 0.98),
        1e-8,
        2.0,
        True,
        0.01,
        "bf16-mixed",
    )
    assert (cfg.max_steps, cfg.batch_size, cfg.tokens_per_sample, cfg.learning_rate) == (6, 4, 32, 3e-3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown training setting.*adam_beta1"):
        TrainConfig.from_dict(dict(cfg.to_dict(), adam_beta1=0.8))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--adam-betas", "0.9"])
    assert build_parser().parse_args(_argv(root, data, tok, cdir, tmp_path / "ser", "--run", "local")).precision is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            _argv(root, data, tok, cdir, tmp_path / "ser", "--run", "local", "--precision", "bf16")
        )


def test_a_cluster_without_documents_stops_after_binarizing_with_the_flags_that_skip_it(demo, tmp_path, capsys):
    """K=2 cluster files that put every document in cluster 0 (typological K=3 on a corpus without the third
    group's languages, in small): one line naming cluster 1, its 0 documents, --train-cluster and
    --exclude-experts, before anything trains; with --train-cluster 0 (the user's choice) the others train.
    A manifest that counts the documents (what `cluster` writes) refuses it before binarizing, --dry-run too."""
    import json
    import shutil

    from xlbtm.cli import main_wrapper
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.formats.clusters import cluster_files, format_line, read_cluster_file
    from xlbtm.scripts.train_experts import main

    root, data, tok, cdir = demo
    one = tmp_path / "clusters"
    shutil.copytree(cdir, one)
    for split in ("train", "valid"):
        for f in cluster_files(one, split):
            f.write_text("".join(format_line(sp, 0) for sp, _ in list(read_cluster_file(f))))
    ser = tmp_path / "ser"
    argv = _argv(root, data, tok, one, ser, "--run", "debug", "--max-steps", "1", "--step-allocation", "proportional")
    assert main_wrapper("train_experts", main, argv) == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1 and "Traceback" not in err, err
    assert "cluster 1 has no training data in split 'train' (cluster 1: 0 documents;" in err
    assert "train the others with --train-cluster 0, then leave it out of the ensemble with eval_ensemble " in err
    assert "--exclude-experts 1" in err
    runs = ser / "2_clusters"
    assert not any(latest_checkpoint(r) for r in runs.glob("demo.cluster*"))  # nothing trained

    assert main(argv + ["--train-cluster", "0"]) == 0  # the user's selection skips the empty cluster
    assert latest_checkpoint(runs / "demo.cluster0") is not None and not (runs / "demo.cluster1").exists()

    m = json.loads((one / "manifest.json").read_text())
    m["splits"] = {"train": {"documents": [120, 0]}}
    (one / "manifest.json").write_text(json.dumps(m))
    ser2 = tmp_path / "ser2"
    dry = _argv(root, data, tok, one, ser2, "--run", "local", "--dry-run")
    assert main_wrapper("train_experts", main, dry) == 2
    assert "cluster 1 has no training data in split 'train' (cluster 1: 0 documents;" in capsys.readouterr().err
    assert not ser2.exists()  # refused before binarizing
    assert main(dry + ["--train-cluster", "0"]) == 0
