"""The scaling study: step allocation, crossover, and a tiny end-to-end study with every artifact checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xlbtm.ensemble.report import compare_ppl


def test_allocate_steps_is_proportional_exact_and_never_zero():
    from xlbtm.train.plan import allocate_steps

    steps = allocate_steps(400, [300, 100, 0, 600])
    assert sum(steps) == 400 and min(steps) >= 1
    assert steps[3] > steps[0] > steps[1] > steps[2] == 1
    assert abs(steps[3] / steps[0] - 2.0) < 0.05
    assert allocate_steps(4, [10, 10, 10, 10]) == [1, 1, 1, 1]
    assert allocate_steps(10, [1, 1, 1]) == [4, 3, 3]  # leftover to the lowest cluster id on ties
    assert allocate_steps(9, [0, 0, 0]) == [3, 3, 3]
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError):
        allocate_steps(2, [1, 1, 1])


def _pt(steps, ens, dense):
    return {
        "expert_steps": steps,
        "dense_train_tokens": steps * 4 * 1000,
        "ensemble_ppl": ens,
        "dense_ppl": dense,
        "relative": ens / dense - 1,
    }


def test_crossover_interpolates_between_losing_and_winning_budgets():
    from xlbtm.study.scaling import crossover

    assert crossover([_pt(100, 12, 10), _pt(300, 11, 10)]) is None
    x = crossover([_pt(100, 11, 10), _pt(300, 9, 10)])  # +10% then -10%: halfway in log tokens
    assert x["between"] == [100, 300] and not x["before_first"]
    assert abs(x["expert_steps"] - (100 * 300) ** 0.5) < 1e-6
    assert crossover([_pt(100, 9, 10)])["before_first"]


@pytest.mark.slow
def test_scaling_study_end_to_end_tiny_budgets(tmp_path):
    out = tmp_path / "study out"
    cmd = [
        sys.executable,
        "-m",
        "xlbtm.scripts.scaling_study",
        "--out",
        str(out),
        "--num-clusters",
        "2",
        "--num-train-docs",
        "240",
        "--num-valid-docs",
        "30",
        "--vocab-size",
        "600",
        "--seed-steps",
        "6",
        "--budgets",
        "3,6",
        "--tokens-per-sample",
        "64",
        "--batch-size",
        "4",
        "--step-allocation",
        "proportional",
        "--warmup-fraction",
        "0.25",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "budget 3: ensemble ppl" in p.stdout and "budget 6: ensemble ppl" in p.stdout

    study = json.loads((out / "study.json").read_text())
    assert [pt["expert_steps"] for pt in study["points"]] == [3, 6]
    bin_manifest = next((out / "budget_3" / "models" / "2_clusters" / "data-bin").glob("*/manifest.json"))
    cluster_tokens = json.loads(bin_manifest.read_text())["splits"]["train"]["tokens"]
    for pt in study["points"]:
        # compute-matched for real: the same optimizer steps and the same training tokens on both sides
        assert sum(pt["expert_steps_per_cluster"]) == pt["dense_steps"] == 2 * pt["expert_steps"]
        assert pt["ensemble_train_tokens"] == pt["dense_train_tokens"] == pt["dense_steps"] * 4 * 64
        assert pt["expert_train_tokens"] == [s * 4 * 64 for s in pt["expert_steps_per_cluster"]]
        bigger = max(range(2), key=lambda k: cluster_tokens[k])
        assert pt["expert_steps_per_cluster"][bigger] >= pt["expert_steps_per_cluster"][1 - bigger]
        for key in ("ensemble_ppl", "dense_ppl", "oracle_ppl"):
            assert pt[key] > 1
        langs = set(study["languages"])
        assert set(pt["per_language"]) == langs
        # report.md's rule: a change that rounds to 0.0% is a tie, neither won nor lost
        outcomes = [compare_ppl(v["ensemble"], v["dense"]) for v in pt["per_language"].values()]
        assert (pt["languages_won"], pt["languages_tied"]) == (outcomes.count("better"), outcomes.count("tied"))
        # the point's own reports exist and say the same numbers
        res = json.loads((out / f"budget_{pt['expert_steps']}" / "eval" / "ensemble" / "result.json").read_text())
        assert res["result_ppl"] == pt["ensemble_ppl"] and res["oracle"]["result_ppl"] == pt["oracle_ppl"]
        # ... and the training budgets the eval read from the checkpoints are point.json's
        dres = json.loads((out / f"budget_{pt['expert_steps']}" / "eval" / "dense" / "result.json").read_text())
        assert res["settings"]["budget"]["tokens"] == pt["ensemble_train_tokens"]
        assert res["settings"]["budget"]["steps"] == sum(pt["expert_steps_per_cluster"])
        assert (dres["settings"]["budget"]["steps"], dres["settings"]["budget"]["tokens"]) == (
            pt["dense_steps"],
            pt["dense_train_tokens"],
        )
        log = [
            json.loads(line)
            for line in (
                out / f"budget_{pt['expert_steps']}" / "models" / "1_clusters" / "dense.cluster0" / "train_log.jsonl"
            )
            .read_text()
            .splitlines()
        ]
        assert max(r["step"] for r in log) == pt["dense_steps"]
    md = (out / "study.md").read_text()
    assert "| 3 | 6 |" in md and "| 6 | 12 |" in md and "per language" in md.lower()
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun reuses every finished stage and point: no training job starts again
    p2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0, p2.stderr[-4000:]
    assert "already evaluated" in p2.stderr + p2.stdout
    assert "$ python -m xlbtm.scripts.train_experts" not in p2.stderr + p2.stdout
    assert json.loads((out / "study.json").read_text())["points"] == study["points"]

    # the same --out with another corpus, K or training setting: refused before anything is written, never a
    # study of the new settings from the old stages (the points used to retrain from the K=2 clusterer, or
    # "resume" their finished experts for 0 steps and report them under the new settings)
    from xlbtm.demo_corpus import write_demo_corpus

    other = write_demo_corpus(tmp_path / "other", n_train=60, n_valid=10, seed=3)["out_dir"]
    before = sorted((str(f), f.stat().st_mtime_ns) for f in out.rglob("*"))
    models = out / "budget_3" / "models"
    for flags, why in (
        (
            ["--data-dir", other],
            f"a tokenizer ({out / 'tokenizer'}) built with --data-dir {out / 'data'}; this run: {other}",
        ),
        (["--num-clusters", "3"], "built with --num-clusters 2; this run: 3"),
        (["--step-allocation", "equal"], f"({models}) built with --step-allocation proportional; this run: equal"),
        (["--budgets", "6,12", "--warmup-fraction", "0"], "--warmup-fraction 0.25; this run: 0.0"),
    ):
        p4 = subprocess.run(cmd + flags, capture_output=True, text=True, timeout=300)
        assert p4.returncode == 2, (flags, p4.stderr[-2000:])
        error = p4.stderr.strip().splitlines()[-1]
        assert error.startswith(f"xlbtm scaling_study: error: --out {out} holds ") and why in error, error
        assert "budget 3:" not in p4.stdout and "Traceback" not in p4.stderr
        assert sorted((str(f), f.stat().st_mtime_ns) for f in out.rglob("*")) == before

    # an existing seed (here the first study's) instead of one trained from scratch: its tokenizer is used
    seed = out / "seed" / "1_clusters" / "seed.cluster0" / "consolidated.pt"
    out2 = tmp_path / "given seed"
    cmd2 = [
        sys.executable,
        "-m",
        "xlbtm.scripts.scaling_study",
        "--out",
        str(out2),
        "--num-clusters",
        "2",
        "--data-dir",
        str(out / "data"),
        "--seed-model",
        str(seed),
        "--tokenizer",
        str(out / "tokenizer"),
        "--budgets",
        "2",
        "--tokens-per-sample",
        "64",
        "--batch-size",
        "4",
    ]
    p3 = subprocess.run(cmd2, capture_output=True, text=True, timeout=600)
    assert p3.returncode == 0, p3.stderr[-4000:]
    assert not (out2 / "seed").exists() and not (out2 / "tokenizer").exists()
    s2 = json.loads((out2 / "study.json").read_text())
    assert s2["points"][0]["dense_train_tokens"] == s2["points"][0]["ensemble_train_tokens"] == 4 * 4 * 64
    info = json.loads((out2 / "budget_2" / "models" / "1_clusters" / "dense.cluster0" / "expert.json").read_text())
    assert info["seed_model"] == str(seed)


@pytest.mark.slurm
@pytest.mark.slow
def test_scaling_study_on_slurm(tmp_path, slurm_cluster, monkeypatch, capsys):
    """Every stage of the study as SLURM jobs (seed, assignment arrays, experts, dense, scoring)."""
    from xlbtm.scripts.scaling_study import main

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_cluster.partition)
    out = tmp_path / "study"
    assert (
        main(
            [
                "--out",
                str(out),
                "--num-clusters",
                "2",
                "--num-train-docs",
                "120",
                "--num-valid-docs",
                "12",
                "--vocab-size",
                "400",
                "--seed-steps",
                "4",
                "--budgets",
                "2",
                "--tokens-per-sample",
                "32",
                "--batch-size",
                "2",
                "--run",
                "slurm",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "budget 2: ensemble ppl" in printed and printed.count("completed at step") >= 4  # seed, 2 experts, dense
    pt = json.loads((out / "study.json").read_text())["points"][0]
    assert pt["ensemble_train_tokens"] == pt["dense_train_tokens"] == 4 * 2 * 32
    assert any((out / "budget_2" / "eval" / "ensemble" / "jobs").iterdir())  # scored by SLURM jobs


def test_objective_picks_the_seed_preset_and_refuses_a_mismatched_one():
    from xlbtm.errors import UsageError
    from xlbtm.quickstart import QuickstartConfig
    from xlbtm.scripts.quickstart import build_parser
    from xlbtm.study.pipeline import _train_flags

    clm = QuickstartConfig(**vars(build_parser().parse_args([])))
    assert clm.objective == "clm" and clm.model_size == "debug"  # today's default, unchanged
    mlm = QuickstartConfig(**vars(build_parser().parse_args(["--objective", "mlm"])))
    assert mlm.model_size == "debug-xlmr"
    assert _train_flags(mlm, "d", "t", 10)["--objective"] == "mlm"  # passed through to train_experts
    with pytest.raises(UsageError, match="--model-size debug is an xglm preset"):
        QuickstartConfig(objective="mlm", model_size="debug")
    with pytest.raises(UsageError, match="--objective"):
        QuickstartConfig(objective="tlm")


def _fake_run(run_dir, objective):
    from xlbtm.formats.expert import ExpertInfo, write_expert_info

    run_dir.mkdir(parents=True)
    write_expert_info(
        run_dir,
        ExpertInfo(
            cluster=0,
            num_clusters=1,
            clusterer_fingerprint=None,
            objective=objective,
            model_args={},
            tokenizer="tok",
            tokenizer_fingerprint="f",
            seed_model="debug",
            run_name="x",
        ),
    )


def test_point_json_lists_per_cluster_in_cluster_order_at_K_12(tmp_path):
    """expert_steps_per_cluster / expert_train_tokens are in cluster order (expert.json's index): at K >= 10
    sorting the run dirs by name put cluster10 and cluster11 before cluster2."""
    from xlbtm.data.dataset import corpus_tokens_per_sample
    from xlbtm.formats.checkpoints import checkpoint_root, publish, staging_dir
    from xlbtm.formats.expert import ExpertInfo, write_expert_info
    from xlbtm.formats.layout import RunLayout, train_log_path
    from xlbtm.study.pipeline import expert_runs, expert_training
    from xlbtm.study.scaling import StudyConfig

    cfg = StudyConfig(out=str(tmp_path), num_clusters=12, seed_model="s", model_size="m")
    models = tmp_path / "budget_3" / "models"
    for k in range(12):
        run = RunLayout.of(models, 12).run_dir("demo", k)
        write_expert_info(
            run,
            ExpertInfo(
                cluster=k,
                num_clusters=12,
                clusterer_fingerprint="fp",
                objective="clm",
                model_args={},
                tokenizer="tok",
                tokenizer_fingerprint="f",
                seed_model="s",
                run_name="demo",
                data={"config": {"max_steps": 100 + k}},
            ),
        )
        root = checkpoint_root(run)
        staging_dir(root, 100 + k).mkdir(parents=True)
        (staging_dir(root, 100 + k) / ".metadata").write_bytes(b"")
        publish(root, 100 + k, {"step": 100 + k, "position": 10 * (k + 1), "seed": 0}, keep=1)
        train_log_path(run).write_text(json.dumps({"kind": "train", "step": 100 + k}) + "\n")
    per_sample = corpus_tokens_per_sample(cfg.objective, cfg.tokens_per_sample)
    rec = expert_training(models, cfg)
    assert rec["expert_steps_per_cluster"] == [100 + k for k in range(12)]
    assert rec["expert_train_tokens"] == [10 * (k + 1) * per_sample for k in range(12)]
    assert rec["ensemble_train_tokens"] == sum(rec["expert_train_tokens"])
    assert [p.name for p in expert_runs(models, 12)] == [f"demo.cluster{k}" for k in range(12)]


def test_a_clm_seed_is_never_reused_for_mlm(tmp_path):
    from xlbtm.errors import UsageError
    from xlbtm.study.pipeline import prepare
    from xlbtm.study.scaling import StudyConfig

    out = tmp_path / "out"
    _fake_run(out / "seed" / "1_clusters" / "seed.cluster0", "clm")
    with pytest.raises(
        UsageError,
        match=r"seed\.cluster0/expert\.json: .* holds clm runs; --objective mlm needs "
        r"its own --out",
    ):
        prepare(StudyConfig(out=str(out), objective="mlm"))
    assert sorted(p.name for p in out.iterdir()) == ["seed"]  # refused before the corpus or tokenizer


def test_a_clm_point_is_never_reused_for_mlm(tmp_path):
    """point.json is keyed by the settings, objective included (keys written before it existed read as clm);
    a point whose key differs is redone, and a clm expert in its models/ is refused rather than resumed."""
    import dataclasses

    from xlbtm.errors import UsageError
    from xlbtm.io import write_json
    from xlbtm.study.pipeline import Prepared, run_point
    from xlbtm.study.scaling import StudyConfig

    # the same settings but for the objective (a given seed: model_size is not resolved per objective)
    clm = StudyConfig(out=str(tmp_path), num_clusters=2, seed_model="s", model_size="m")
    old_key = {k: v for k, v in dataclasses.asdict(clm).items() if k not in ("out", "budgets", "run", "objective")}
    point = tmp_path / "budget_3"
    write_json(point / "point.json", {"key": {**old_key, "expert_steps": 3}, "ensemble_ppl": 9.0})
    _fake_run(point / "models" / "2_clusters" / "demo.cluster0", "clm")
    prep = Prepared(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path)
    assert run_point(clm, prep, 3, point)["ensemble_ppl"] == 9.0  # an old clm point is still reused by clm
    mlm = dataclasses.replace(clm, objective="mlm")
    with pytest.raises(UsageError, match=r"demo\.cluster0/expert\.json: .* holds clm runs"):
        run_point(mlm, prep, 3, point)


def test_study_report_names_the_metric():
    from xlbtm.study.report import render_markdown

    pt = {
        "expert_steps": 3,
        "dense_steps": 6,
        "ensemble_train_tokens": 1512,
        "dense_train_tokens": 1512,
        "dense_ppl": 20.0,
        "ensemble_ppl": 19.0,
        "oracle_ppl": 18.0,
        "relative": -0.05,
        "languages_won": 1,
        "languages": 1,
        "per_language": {"en": {"dense": 20.0, "ensemble": 19.0, "oracle": 18.0, "tokens": 9}},
    }
    study = {
        "config": {
            "num_clusters": 2,
            "clustering": "tfidf",
            "temperature": 0.1,
            "model_size": "debug-xlmr",
            "seed_steps": 6,
            "learning_rate": 5e-3,
            "warmup_fraction": 0.0,
            "step_allocation": "equal",
            "objective": "mlm",
        },
        "points": [pt],
        "data": "d",
        "languages": ["en"],
        "tokens_per_step": 252,
        "crossover": None,
        "seconds": 1.0,
    }
    md = render_markdown(study)
    assert "| dense pseudo-ppl | ensemble pseudo-ppl | oracle pseudo-ppl |" in md
    assert "pseudo-perplexity (masked LM) change" in md
    del study["config"]["objective"]  # a study written before --objective: clm, perplexity
    md = render_markdown(study)
    assert "| dense ppl | ensemble ppl | oracle ppl |" in md and "pseudo" not in md


def test_headlines_count_a_tie_apart(monkeypatch, capsys):
    """The quickstart's headline and study.md count wins by report.md's rule and say the ties apart."""
    import xlbtm.scripts.quickstart as qs
    from xlbtm.study.report import render_markdown

    summary = {
        "report": "r/report.md",
        "ensemble_ppl": 19.0,
        "dense_ppl": 20.0,
        "oracle_ppl": 18.0,
        "languages_won": 4,
        "languages_tied": 1,
        "languages": 6,
        "num_clusters": 2,
        "metric": "ppl",
        "seconds": 3.0,
    }
    monkeypatch.setattr(qs, "run_quickstart", lambda cfg: summary)
    assert qs.main([]) == 0
    headline = capsys.readouterr().out.strip().splitlines()[-1]
    assert "| K=2 | better in 4/6 languages | 1 tied | 3 s" in headline
    summary["languages_tied"] = 0  # no tie: the headline the README shows
    qs.main([])
    assert "| better in 4/6 languages | 3 s" in capsys.readouterr().out
    pt = {
        "expert_steps": 3,
        "dense_steps": 6,
        "ensemble_train_tokens": 1512,
        "dense_train_tokens": 1512,
        "dense_ppl": 20.0,
        "ensemble_ppl": 19.0,
        "oracle_ppl": 18.0,
        "relative": -0.05,
        "languages_won": 1,
        "languages_tied": 1,
        "languages": 2,
        "per_language": {},
    }
    config = {
        "num_clusters": 2,
        "clustering": "lang",
        "temperature": 0.1,
        "model_size": "debug",
        "seed_steps": 6,
        "learning_rate": 5e-3,
        "warmup_fraction": 0.0,
        "step_allocation": "equal",
    }
    study = {"config": config, "points": [pt], "data": "d", "languages": [], "tokens_per_step": 252, "seconds": 1.0}
    assert "| -5.0% | 1/2 (1 tied) |" in render_markdown({**study, "crossover": None})


def test_stages_built_from_other_inputs_are_refused_before_anything_is_written(tmp_path):
    """Each stage's key (stages.json) against a rerun's: another corpus (or the same path with changed files),
    another K or another training setting is refused with one line naming --out and the flag; the same
    settings pass. (No training here: the built stages are stand-ins.)"""
    import dataclasses
    import os

    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.errors import UsageError
    from xlbtm.study.pipeline import _check_stages, _record_stages, prepare, stage_keys
    from xlbtm.study.scaling import StudyConfig, point_dir

    corpus = tmp_path / "corpus"
    write_demo_corpus(corpus, n_train=12, n_valid=4, seed=1)
    other = tmp_path / "other"
    write_demo_corpus(other, n_train=12, n_valid=4, seed=2)
    out = tmp_path / "out"
    cfg = StudyConfig(out=str(out), data_dir=str(corpus), num_clusters=2, budgets=[3])
    points = [(3, point_dir(out, 3))]
    stages, _ = stage_keys(cfg, out, corpus, None, points)
    _record_stages(stages)
    for sub in ("tokenizer", "seed", "clusterer", "budget_3/models"):
        (out / sub).mkdir(parents=True)
    before = sorted(str(p) for p in out.rglob("*"))

    _check_stages(cfg, stage_keys(cfg, out, corpus, None, points)[0])  # the same inputs: reused
    refused = {
        "another corpus": (
            dict(data_dir=str(other)),
            f"a tokenizer ({out / 'tokenizer'}) built with --data-dir {corpus}; this run: {other}",
        ),
        "another K": (
            dict(num_clusters=3),
            f"a clusterer and its assignment ({out / 'clusterer'}) built with --num-clusters 2; this run: 3",
        ),
        "a seed setting": (dict(seed_steps=7), "a dense seed"),
        "an expert setting": (
            dict(step_allocation="equal"),
            f"experts and a dense model ({out / 'budget_3' / 'models'}) built with --step-allocation proportional; this run: equal",
        ),
    }
    for what, (change, why) in refused.items():
        with pytest.raises(UsageError, match="^--out .* holds ") as e:
            prepare(dataclasses.replace(cfg, **change), points=points)
        assert why in str(e.value) and "pass another --out" in str(e.value), (what, str(e.value))
        assert sorted(str(p) for p in out.rglob("*")) == before, what
    # the same path, but a file of it rewritten since
    f = next((corpus / "train").rglob("*.jsonl"))
    f.write_text(f.read_text() + f.read_text().splitlines()[0] + "\n")
    os.utime(f, ns=(1, 1))
    with pytest.raises(UsageError, match=rf"built with --data-dir {corpus} as it was then \(3 files; now 3, changed"):
        prepare(cfg, points=points)
    assert sorted(str(p) for p in out.rglob("*")) == before
