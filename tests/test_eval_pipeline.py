"""Trainer -> eval -> consolidate -> eval: the real expert dirs the trainer writes (contract 5) go through
scoring straight from DCP and again from consolidated.pt, with identical results."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_demo_data

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def test_trained_experts_eval_before_and_after_consolidation(tmp_path):
    from xlbtm.data.binarize import binarize
    from xlbtm.ensemble.consolidate import consolidate
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval
    from xlbtm.scripts.train_experts import main as train_main
    from xlbtm.tokenizer import load_tokenizer

    data, tok, cdir = make_demo_data(tmp_path, n_train=60, n_valid=10)
    binarize(data, tmp_path / "bin", load_tokenizer(tok), clusters_dir=cdir, workers=0)
    ser = tmp_path / "ser"
    argv = [
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
        "3",
        "--batch-size",
        "2",
        "--tokens-per-sample",
        "32",
        "--learning-rate",
        "3e-3",
        "--save-interval-updates",
        "3",
        "--validate-interval-updates",
        "0",
        "--log-interval",
        "1",
        "--binarize-workers",
        "0",
        "--run",
        "debug",
    ]
    assert train_main(argv) == 0
    experts = ser / "2_clusters"
    cfg = dict(data_dir=str(data), data_subset="valid", experts_dir=str(experts), max_valid_steps=6)
    before = {
        t: run_eval(EvalConfig(job_dir=str(tmp_path / f"dcp_{t}"), ensemble_type=t, **cfg))
        for t in ("uniform", "oracle")
    }
    runs = sorted(p.parent for p in experts.glob("*/expert.json"))
    assert len(runs) == 2
    for run in runs:
        consolidate(run)
        assert (run / "consolidated.pt").is_file()
    for t, ref in before.items():
        after = run_eval(EvalConfig(job_dir=str(tmp_path / f"cons_{t}"), ensemble_type=t, **cfg))
        assert after["result_ppl"] == pytest.approx(ref["result_ppl"], rel=1e-6)
        assert after["settings"]["experts"] == ref["settings"]["experts"]
    meta = json.loads((tmp_path / "cons_uniform" / "scores" / "expert0.json").read_text())
    assert meta["expert"].endswith("demo.cluster0")  # cluster 0 from expert.json
