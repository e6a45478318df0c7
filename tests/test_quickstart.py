"""The README's demo command at a reduced size: every artifact of every stage exists and is usable."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs out"  # a space in the path on purpose
    cmd = [
        sys.executable,
        "-m",
        "xlbtm.scripts.quickstart",
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
        "--expert-steps",
        "4",
        "--tokens-per-sample",
        "64",
        "--batch-size",
        "4",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "report: " in p.stdout and "ensemble ppl" in p.stdout

    # clusterer + cluster files for both splits, covering every document
    assert json.loads((out / "clusterer" / "clusterer.json").read_text())["num_clusters"] == 2
    manifest = json.loads((out / "clusters" / "manifest.json").read_text())
    assert manifest["num_clusters"] == 2
    for split, n in (("train", 240), ("valid", 30)):
        lines = [
            json.loads(line)
            for f in sorted((out / "clusters" / split).rglob("*.jsonl"))
            for line in f.read_text().splitlines()
        ]
        assert len(lines) == n and {d["cluster"] for d in lines} <= {0, 1}

    # experts and the dense model: expert.json, DCP checkpoints, consolidated.pt
    experts = sorted((out / "models" / "2_clusters").glob("demo.cluster*"))
    assert [e.name for e in experts] == ["demo.cluster0", "demo.cluster1"]
    dense = out / "models" / "1_clusters" / "dense.cluster0"
    for run in experts + [dense]:
        info = json.loads((run / "expert.json").read_text())
        assert info["num_clusters"] in (1, 2)
        assert (run / "checkpoints" / "latest").read_text().strip().startswith("step_")
        assert (run / "consolidated.pt").is_file()
        assert (run / "train_log.jsonl").is_file()

    # the HF export loads in transformers and gives finite logits
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = experts[0] / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok("a b c", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    # evaluation outputs
    for name in ("ensemble", "dense"):
        res = json.loads((out / "eval" / name / "result.json").read_text())
        assert res["result_ppl"] > 1 and res["documents"] == 30
        assert set(res["per_language"]) == {
            d["lang"]
            for d in map(json.loads, (out / "data" / "valid").glob("*.jsonl").__next__().read_text().splitlines())
        }
    report = (out / "eval" / "ensemble" / "report.md").read_text()
    assert "Per language" in report and "dense" in report.lower()
    png = out / "eval" / "ensemble" / "ppl_by_language.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same --out with another corpus or another K: every stage was built from the first run's inputs, so
    # the rerun is refused before anything is written (it used to reuse the old tokenizer, seed and K=2
    # clusterer, "resume" the finished models for 0 steps and print their numbers as the new corpus')
    from xlbtm.demo_corpus import write_demo_corpus

    other = tmp_path / "other corpus"
    write_demo_corpus(other, n_train=60, n_valid=10, seed=3)
    clusterer_json = (out / "clusterer" / "clusterer.json").read_bytes()
    before = sorted((str(f), f.stat().st_mtime_ns) for f in out.rglob("*"))
    for extra, why in (
        (["--data-dir", str(other)], f"built with --data-dir {out / 'data'}; this run: {other}"),
        (
            ["--num-clusters", "3"],
            f"a clusterer and its assignment ({out / 'clusterer'}) built with --num-clusters 2; this run: 3",
        ),
        (
            ["--expert-steps", "5"],
            f"experts and a dense model ({out / 'models'}) built with --expert-steps 4; this run: 5",
        ),
    ):
        p2 = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300)
        assert p2.returncode == 2, (extra, p2.stderr[-2000:])
        error = p2.stderr.strip().splitlines()[-1]
        assert error.startswith(f"xlbtm quickstart: error: --out {out} holds ") and why in error, error
        assert "pass another --out" in error and "Traceback" not in p2.stderr
        assert "ensemble ppl" not in p2.stdout  # no headline from the old models
        assert sorted((str(f), f.stat().st_mtime_ns) for f in out.rglob("*")) == before
    assert (out / "clusterer" / "clusterer.json").read_bytes() == clusterer_json  # still K=2, nothing replaced


def _tiny(out, *extra):
    return [
        sys.executable,
        "-m",
        "xlbtm.scripts.quickstart",
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
        "--expert-steps",
        "4",
        "--tokens-per-sample",
        "64",
        "--batch-size",
        "4",
        *extra,
    ]


def test_quickstart_mlm_end_to_end(tmp_path):
    """--objective mlm: XLM-R seed, experts and dense model, scored by pseudo-perplexity; a rerun reuses every
    stage; the same --out is refused to a clm run (and, by the same check, a clm one to an mlm run)."""
    out = tmp_path / "mlm"
    cmd = _tiny(out, "--objective", "mlm")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    headline = p.stdout.strip().splitlines()[-1]
    assert headline.startswith("ensemble pseudo-ppl ") and "| dense pseudo-ppl " in headline, headline
    assert "| K=2 | better in " in headline and "/6 languages |" in headline
    logged = p.stdout + p.stderr
    assert "--objective mlm" in logged and "--style xlmr" in logged  # the commands a user would type

    # every model is an XLM-R trained with MLM: the seed, both experts, the dense model
    runs = [
        out / "seed" / "1_clusters" / "seed.cluster0",
        out / "models" / "2_clusters" / "demo.cluster0",
        out / "models" / "2_clusters" / "demo.cluster1",
        out / "models" / "1_clusters" / "dense.cluster0",
    ]
    for run in runs:
        info = json.loads((run / "expert.json").read_text())
        assert info["objective"] == "mlm" and info["model_args"]["arch"] == "xlmr", run
        assert info["data"]["config"]["objective"] == "mlm"
    assert json.loads((out / "tokenizer" / "xlbtm_tokenizer.json").read_text())["style"] == "xlmr"

    # scored by pseudo-perplexity, reading the 64-position context the models trained with (<s> + 63)
    for name in ("ensemble", "dense"):
        res = json.loads((out / "eval" / name / "result.json").read_text())
        assert res["settings"]["objective"] == "mlm" and res["settings"]["mlm_groups"]
        assert res["settings"]["max_tokens"] == 63 and res["result_ppl"] > 1
    assert json.loads((out / "eval" / "ensemble" / "result.json").read_text())["oracle"]["result_ppl"] > 1

    # compute matching in corpus tokens: an MLM sample is <s> + 63 of them
    pt = json.loads((out / "point.json").read_text())
    assert pt["objective"] == "mlm" and pt["metric"] == "pseudo-ppl" and pt["key"]["objective"] == "mlm"
    assert pt["ensemble_train_tokens"] == pt["dense_train_tokens"] == pt["dense_steps"] * 4 * 63
    assert headline.startswith(f"ensemble pseudo-ppl {pt['ensemble_ppl']:.2f} | dense pseudo-ppl {pt['dense_ppl']:.2f}")

    # the HF export is a masked LM
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    hf_dir = runs[1] / "hf"
    model = AutoModelForMaskedLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(f"a {tok.mask_token} c", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    # a rerun reuses every finished stage: nothing trains or scores again, the headline is the same
    p2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0, p2.stderr[-4000:]
    assert "already evaluated" in p2.stderr + p2.stdout
    assert "$ python -m xlbtm.scripts.train_experts" not in p2.stderr + p2.stdout
    assert p2.stdout.strip().splitlines()[-1].split(" | ")[:4] == headline.split(" | ")[:4]

    # the same --out with the other objective: refused before anything is written (exit 2, one line)
    before = sorted(str(f) for f in out.rglob("*"))
    p3 = subprocess.run(_tiny(out), capture_output=True, text=True, timeout=300)
    assert p3.returncode == 2, p3.stderr[-2000:]
    assert "needs its own --out" in p3.stderr and "--objective clm" in p3.stderr
    assert sorted(str(f) for f in out.rglob("*")) == before


def test_quickstart_mlm_with_parallel_data_trains_tlm_and_scores_retrieval(tmp_path):
    """--objective mlm --parallel-data-dir: the pairs are assigned by their target side with the corpus'
    clusterer, experts (their own cluster's pairs) and the dense model (all pairs) train MLM+TLM, and both are
    scored for retrieval, side by side in point.json and the headline. The same --out is refused to an MLM-only
    run (its finished MLM+TLM runs would be "resumed" as MLM)."""
    from parallel_helpers import write_mono, write_pairs

    mono = write_mono(tmp_path / "mono", n=120)
    pairs = write_pairs(tmp_path / "pairs", n=40)
    write_pairs(tmp_path / "pairs", n=10, split="valid")
    out = tmp_path / "tlm"
    cmd = _tiny(
        out,
        "--objective",
        "mlm",
        "--data-dir",
        str(mono),
        "--vocab-size",
        "80",
        "--parallel-data-dir",
        str(pairs),
        "--tlm-ratio",
        "0.5",
    )
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    headline = p.stdout.strip().splitlines()[-1]
    assert "| retrieval acc@1 ensemble " in headline and " dense " in headline.split("retrieval")[1], headline
    logged = p.stdout + p.stderr
    assert "--parallel-side tgt" in logged and "--path-to-parallel-clusters-dir" in logged

    assert json.loads((out / "pair_clusters" / "manifest.json").read_text())["parallel_side"] == "tgt"
    runs = {"demo.cluster0": 2, "demo.cluster1": 2, "dense.cluster0": 1}
    for name, K in runs.items():
        info = json.loads((out / "models" / f"{K}_clusters" / name / "expert.json").read_text())
        assert info["data"]["config"]["objective"] == "mlm+tlm" and info["objective"] == "mlm"
        assert info["data"]["pairs"]
    pt = json.loads((out / "point.json").read_text())
    assert pt["key"]["parallel_data_dir"] == str(pairs) and pt["ensemble_train_tokens"] == pt["dense_train_tokens"]
    r = pt["retrieval"]
    assert set(r["per_language"]) == {"de", "fr"} and 0 <= r["ensemble"] <= 1 and 0 <= r["dense"] <= 1
    assert f"retrieval acc@1 ensemble {r['ensemble']:.3f} dense {r['dense']:.3f}" in headline
    for name in ("ensemble", "dense"):
        res = json.loads((out / "eval" / name / "result.json").read_text())
        assert res["retrieval"]["pairs"] == 20 and res["retrieval"]["per_language"]["de"]["chance"] == 0.1

    before = sorted(str(f) for f in out.rglob("*"))
    p2 = subprocess.run(
        _tiny(out, "--objective", "mlm", "--data-dir", str(mono), "--vocab-size", "80"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p2.returncode == 2, p2.stderr[-2000:]
    assert "trained with mlm+tlm" in p2.stderr and "needs its own --out" in p2.stderr
    assert sorted(str(f) for f in out.rglob("*")) == before
