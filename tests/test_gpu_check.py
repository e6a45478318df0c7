"""benchmarks/gpu_check.sh runs its CPU parts anywhere and says plainly which GPU figures it did not measure."""

from __future__ import annotations

import json
import subprocess
import sys

from train_helpers import REPO


def test_gpu_check_quick_prints_one_json_line_per_figure(tmp_path):
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(ln) for ln in out.stdout.splitlines()]  # every stdout line is one JSON object
    figures = {ln["figure"]: ln for ln in lines}
    assert "error" not in json.dumps(lines), lines
    assert figures["train_fp32_cpu"]["measured"] and figures["train_fp32_cpu"]["steps"] == 10
    assert figures["eval_cpu"]["ppl"] > 1
    for f in ("train_bf16_vs_fp32", "train_fsdp_compile_ac", "eval_gpu_vs_cpu", "speed_xglm-564M", "speed_xglm-1.7B"):
        assert figures[f]["measured"] is False and "not measured" in figures[f]["reason"]
