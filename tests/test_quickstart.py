"""The README's demo command at a reduced size: every artifact of every stage exists and is usable."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs out"  # a space in the path on purpose
    cmd = [sys.executable, "-m", "xlbtm.scripts.quickstart", "--out", str(out), "--num-clusters", "2",
           "--num-train-docs", "240", "--num-valid-docs", "30", "--vocab-size", "600",
           "--seed-steps", "6", "--expert-steps", "4", "--tokens-per-sample", "64", "--batch-size", "4"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "report: " in p.stdout and "ensemble ppl" in p.stdout

    # clusterer + cluster files for both splits, covering every document
    assert json.loads((out / "clusterer" / "clusterer.json").read_text())["num_clusters"] == 2
    manifest = json.loads((out / "clusters" / "manifest.json").read_text())
    assert manifest["num_clusters"] == 2
    for split, n in (("train", 240), ("valid", 30)):
        lines = [json.loads(l) for f in sorted((out / "clusters" / split).rglob("*.jsonl"))
                 for l in f.read_text().splitlines()]
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
        assert set(res["per_language"]) == {d["lang"] for d in map(json.loads, (out / "data" / "valid").glob("*.jsonl").__next__().read_text().splitlines())}
    report = (out / "eval" / "ensemble" / "report.md").read_text()
    assert "Per language" in report and "dense" in report.lower()
    png = out / "eval" / "ensemble" / "ppl_by_language.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
