"""Training's validation against eval_ensemble on the same held-out split (issue #30).

    .venv/bin/python benchmarks/bench_validation.py [--valid-docs 2000] [--repeats 2]
    git worktree add /tmp/xlbtm-base <commit>          # optional: the code before, timed in the same run
    .venv/bin/python benchmarks/bench_validation.py --before /tmp/xlbtm-base

One dense run of the debug model (the quickstart's seed preset, a 2,000-piece vocabulary, batch 8 x 128
tokens) trains ONE step on the demo corpus with a large valid split and validates at the end (its only
validation: `--validate-at-start` is off by default). Side by side, in fresh processes interleaved A B C A B C:
  before   --batch-tokens-valid 1024: validation in micro-batches of the training batch (what train_experts did)
  after    the default: no-grad batches of 4x the training micro-batch
  eval     eval_ensemble --ensemble-type dense of the trained model on the same split (c-BTM's windows)
  base     (with --before DIR) the same 1-step train_experts run by that checkout's code, which also validated
           at step 0: wall time only (it logged no validation tokens/s)
Reported: validation tokens/s from train_log.jsonl (median), and each whole command's wall time (median), so
"a 1-step train_experts costs at most about twice an eval_ensemble of its valid split" can be read off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xlbtm.corpus import Corpus  # noqa: E402  (after the path: runs from a checkout)
from xlbtm.demo_corpus import write_demo_corpus  # noqa: E402
from xlbtm.tokenizer import train_sentencepiece  # noqa: E402

B, T = 8, 128


def _run(argv: list[str], code: Path = REPO) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)}, cwd=code)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _valid_tps(ser: Path) -> float:
    log = next(ser.rglob("train_log.jsonl"))
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "valid"][-1]["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--valid-docs", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--before", type=Path, help="a checkout of older code: its 1-step train_experts is timed too")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_valid_"))
    data = root / "data"
    write_demo_corpus(data, n_train=400, n_valid=a.valid_docs, seed=0)
    tok = train_sentencepiece([d.text for d in Corpus(data).iter_documents("train")], root / "tok", vocab_size=2000)
    py = sys.executable

    def train(name: str, extra: list[str], bin_dir: str = "bin") -> list[str]:
        return [
            py, "-m", "xlbtm.scripts.train_experts", "--run", "debug", "--seed-model", "debug",
            "--tokenizer", str(tok), "--path-to-data", str(data), "--num-clusters", "1",
            "--serialization-dir", str(root / name), "--binarized-dir", str(root / bin_dir),
            "--max-steps", "1", "--batch-size", str(B), "--tokens-per-sample", str(T),
            "--validate-interval-updates", "1", "--save-interval-updates", "1000", "--device", "cpu", *extra,
        ]  # fmt: skip

    _run(train("warm", []))  # binarizes once (shared by every run below) and leaves a model for eval
    if a.before is not None:  # the older code binarizes into a dir of its own, once, before the timed runs
        _run(train("base_warm", [], "bin_base"), a.before.resolve())
    model = next((root / "warm").rglob("expert.json")).parent
    evaluate = [
        py, "-m", "xlbtm.scripts.eval_ensemble", "--data-dir", str(data), "--ensemble-type", "dense",
        "--model-paths", str(model), "--device", "cpu",
    ]  # fmt: skip
    times: dict[str, list[float]] = {"before": [], "after": [], "eval": [], "base": []}
    tps: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(a.repeats):
        for name, extra in (("before", ["--batch-tokens-valid", str(B * T)]), ("after", [])):
            ser = root / f"{name}{r}"
            times[name].append(_run(train(f"{name}{r}", extra)))
            tps[name].append(_valid_tps(ser))
        times["eval"].append(_run([*evaluate, "--job-dir", str(root / f"eval{r}")]))
        if a.before is not None:
            times["base"].append(_run(train(f"base{r}", [], "bin_base"), a.before.resolve()))
    res = json.loads((root / "eval0" / "result.json").read_text())
    med = {k: statistics.median(v) for k, v in times.items() if v}
    vt = {k: statistics.median(v) for k, v in tps.items()}
    print(f"valid split: {res['documents']} documents, {res['tokens']} tokens; torch threads {os.cpu_count()}")
    print(
        f"validation tokens/s  before {vt['before']:,.0f}  after {vt['after']:,.0f}  ({vt['after'] / vt['before']:.2f}x)"
    )
    print(
        f"wall s (median of {a.repeats})  train 1 step before {med['before']:.1f}  after {med['after']:.1f}  "
        f"eval_ensemble {med['eval']:.1f}  -> after / eval {med['after'] / med['eval']:.2f}x"
    )
    if "base" in med:
        print(f"base code's 1-step train_experts {med['base']:.1f} s -> base / eval {med['base'] / med['eval']:.2f}x")


if __name__ == "__main__":
    main()
