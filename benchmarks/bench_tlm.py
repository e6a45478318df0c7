"""MLM+TLM vs MLM experts at equal compute (issue #18): does translation language modeling raise cross-lingual
retrieval, as XLM and InfoXLM found, and what does it cost in masked-LM pseudo-perplexity?

    .venv/bin/python benchmarks/bench_tlm.py [--mono ../shared/corpora/manpages] [--pairs ../shared/corpora/gettext]
        [--num-clusters 4] [--seed-steps 1500] [--expert-steps 300] [--tlm-ratio 0.5] [--out bench_tlm_out]

1. The languages of both corpora (gettext's target languages that manpages also has, plus English) are kept:
   manpages documents of those languages are the monolingual corpus, gettext pairs into them the parallel data
   (at most --pairs-per-lang per language for training, --valid-pairs-per-lang for retrieval).
2. Shared by both arms: one SentencePiece tokenizer (on documents and both sides of the pairs), one dense
   debug XLM-R seed pre-trained with MLM on the documents, one typological clusterer (URIEL, balanced, K), with
   documents assigned by `lang` and pairs by `tgt_lang` (`cluster --parallel-side tgt`).
3. Two arms from that seed, at equal compute (the same steps, batch and tokens per sample; equal step
   allocation): K experts with `--objective mlm`, and K experts with `--objective mlm+tlm --tlm-ratio R` on
   their own cluster's pairs (`--path-to-parallel-clusters-dir`); and for each objective a dense model with
   K x the expert steps (all pairs).
4. Every model is evaluated by `eval_ensemble` (experts: `--ensemble-type lang`): pseudo-perplexity on the
   documents' valid split, and `--parallel-data` retrieval accuracy@1 (tgt -> src) per language on the valid
   pairs.
Every step goes through the CLI entry points a user types and resumes (a rerun skips what is done). Prints
Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"


def cli(module: str, flags: dict, *positional) -> None:
    """Run `python -m xlbtm.scripts.<module>` in this process with these flags (True: a bare switch)."""
    import importlib

    argv = [str(p) for p in positional]
    for k, v in flags.items():
        if v is True:
            argv.append(k)
        elif v is not None and v is not False:
            argv += [k, str(v)]
    print(f"$ python -m xlbtm.scripts.{module} {' '.join(argv)}", flush=True)
    rc = importlib.import_module(f"xlbtm.scripts.{module}").main(argv)
    if rc not in (0, None):
        raise SystemExit(f"{module} exited {rc}")


def _langs(root: Path, field: str) -> set[str]:
    out = set()
    for f in sorted((root / "valid").rglob("*.jsonl")):
        with open(f, encoding="utf-8") as fi:
            out |= {json.loads(line).get(field) for line in fi if line.strip()}
    return out - {None}


def filter_jsonl(src: Path, dst: Path, field: str, keep: set[str], per_lang: int | None) -> None:
    """`src` (every split) with only the lines whose `field` is in `keep`, at most `per_lang` per value and file
    (the first in file order); same layout and file names."""
    if (dst / ".done").is_file():
        return
    for f in sorted(src.rglob("*.jsonl")):
        seen: dict[str, int] = {}
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(f, encoding="utf-8") as fi, open(out, "w", encoding="utf-8") as fo:
            for line in fi:
                v = json.loads(line).get(field)
                if v in keep and (per_lang is None or seen.get(v, 0) < per_lang):
                    seen[v] = seen.get(v, 0) + 1
                    fo.write(line)
    (dst / ".done").write_text("")


def tokenizer_corpus(mono: Path, pairs: Path, dst: Path) -> None:
    """Documents plus both sides of every training pair, as one corpus the tokenizer is fitted on."""
    if (dst / ".done").is_file():
        return
    (dst / "train" / "00000").mkdir(parents=True, exist_ok=True)
    with open(dst / "train" / "00000" / "all.jsonl", "w", encoding="utf-8") as fo:
        for f in sorted((mono / "train").rglob("*.jsonl")):
            fo.writelines(open(f, encoding="utf-8"))
        for f in sorted((pairs / "train").rglob("*.jsonl")):
            for line in open(f, encoding="utf-8"):
                p = json.loads(line)
                for side, lang in (("src", "src_lang"), ("tgt", "tgt_lang")):
                    fo.write(json.dumps({"text": p[side], "lang": p[lang]}, ensure_ascii=False) + "\n")
    (dst / ".done").write_text("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mono", default=str(CORPORA / "manpages"))
    ap.add_argument("--pairs", default=str(CORPORA / "gettext"))
    ap.add_argument("--num-clusters", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--pairs-per-lang", type=int, default=4000)
    ap.add_argument("--valid-pairs-per-lang", type=int, default=300)
    ap.add_argument("--seed-steps", type=int, default=1500)
    ap.add_argument("--expert-steps", type=int, default=300)
    ap.add_argument("--tlm-ratio", type=float, default=0.5)
    ap.add_argument("--tokens-per-sample", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=5e-3)
    ap.add_argument("--out", default="bench_tlm_out")
    a = ap.parse_args()

    from xlbtm.cli import setup_logging

    setup_logging("bench_tlm")
    t0 = time.time()
    out = Path(a.out).resolve()
    langs = (_langs(Path(a.pairs), "tgt_lang") & _langs(Path(a.mono), "lang")) | {"en"}
    mono, pairs, K = out / "mono", out / "pairs", a.num_clusters
    filter_jsonl(Path(a.mono), mono, "lang", langs, None)
    filter_jsonl(Path(a.pairs) / "train", pairs / "train", "tgt_lang", langs, a.pairs_per_lang)
    filter_jsonl(Path(a.pairs) / "valid", pairs / "valid", "tgt_lang", langs, a.valid_pairs_per_lang)
    tokenizer_corpus(mono, pairs, out / "tok_corpus")
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        from xlbtm.tokenizer import train_tokenizer_from_corpus

        train_tokenizer_from_corpus(out / "tok_corpus", tok, vocab_size=a.vocab_size, style="xlmr")
    common = {
        "--run": "local",
        "--num-gpus": 1,
        "--tokenizer": tok,
        "--tokens-per-sample": a.tokens_per_sample,
        "--batch-size": a.batch_size,
        "--learning-rate": a.learning_rate,
        "--max-valid-samples": 256,
    }

    def train(ser: Path, steps: int, **flags) -> None:
        interval = max(steps // 2, 1)
        cli(
            "train_experts",
            {
                **common,
                "--max-steps": steps,
                "--save-interval-updates": interval,
                "--validate-interval-updates": interval,
                "--serialization-dir": ser,
                **flags,
            },
        )

    seed_run = out / "seed" / "1_clusters" / "seed.cluster0"
    if not (seed_run / "consolidated.pt").is_file():
        train(
            out / "seed",
            a.seed_steps,
            **{
                "--seed-model": "debug-xlmr",
                "--objective": "mlm",
                "--num-clusters": 1,
                "--path-to-data": mono,
                "--run-name": "seed",
                "--warmup-updates": a.seed_steps // 10,
            },
        )
        cli("consolidate", {}, seed_run)
    seed = seed_run / "consolidated.pt"

    clusterer = out / "clusterer"
    if not (clusterer / "clusterer.json").is_file():
        cli(
            "train_clusterer",
            {
                "--typological": True,
                "--langs": ",".join(sorted(langs)),
                "--num-clusters": K,
                "--data-dir": mono / "train",
                "--tokenizer": tok,
                "--output-dir": clusterer,
            },
        )
    for split in ("train", "valid"):
        cli(
            "cluster",
            {
                "--data-dir": mono,
                "--path-to-clusterer": clusterer,
                "--output-prefix": out / "clusters",
                "--split": split,
            },
        )
        cli(
            "cluster",
            {
                "--data-dir": pairs,
                "--path-to-clusterer": clusterer,
                "--parallel-side": "tgt",
                "--output-prefix": out / "pair_clusters",
                "--split": split,
            },
        )

    results = {}
    for arm, objective in (("mlm", "mlm"), ("mlm+tlm", "mlm+tlm")):
        tlm = {"--parallel-data": pairs, "--tlm-ratio": a.tlm_ratio} if "tlm" in objective else {}
        ser = out / arm.replace("+", "_")
        train(
            ser / "experts",
            a.expert_steps,
            **{
                "--seed-model": seed,
                "--objective": objective,
                "--num-clusters": K,
                "--path-to-data": mono,
                "--path-to-clusters-dir": out / "clusters",
                "--run-name": "x",
                **tlm,
                **({"--path-to-parallel-clusters-dir": out / "pair_clusters"} if tlm else {}),
            },
        )
        train(
            ser / "dense",
            K * a.expert_steps,
            **{
                "--seed-model": seed,
                "--objective": objective,
                "--num-clusters": 1,
                "--path-to-data": mono,
                "--run-name": "dense",
                **tlm,
            },
        )
        evals = {
            "dense": {"--ensemble-type": "dense", "--model-paths": ser / "dense" / "1_clusters" / "dense.cluster0"},
            "ensemble": {
                "--ensemble-type": "lang",
                "--path-to-clusterer": clusterer,
                "--experts-dir": ser / "experts" / f"{K}_clusters",
            },
        }
        for side, flags in evals.items():
            job = ser / f"eval_{side}"
            if not (job / "result.json").is_file():
                cli(
                    "eval_ensemble",
                    {"--data-dir": mono, "--data-subset": "valid", "--job-dir": job, "--parallel-data": pairs, **flags},
                )
            results[arm, side] = json.loads((job / "result.json").read_text())

    print(
        f"\nK={K} typological experts vs a dense model with K x the steps, per objective; {len(langs)} languages "
        f"({', '.join(sorted(langs))}); seed {a.seed_steps} MLM steps; experts {a.expert_steps} steps, dense "
        f"{K * a.expert_steps}; {a.batch_size} x {a.tokens_per_sample} tokens per step; --tlm-ratio {a.tlm_ratio} "
        f"({time.time() - t0:.0f} s in all)\n"
    )
    cols = [(arm, side) for arm in ("mlm", "mlm+tlm") for side in ("ensemble", "dense")]
    print("| language | " + " | ".join(f"{arm} {side}: acc@1 / pseudo-ppl" for arm, side in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    rlangs = sorted(results["mlm", "dense"]["retrieval"]["per_language"])
    for lang in rlangs + ["all"]:
        cells = []
        for c in cols:
            r = results[c]
            acc = r["retrieval"]["accuracy"] if lang == "all" else r["retrieval"]["per_language"][lang]["accuracy"]
            ppl = r["result_ppl"] if lang == "all" else r["per_language"].get(lang, {}).get("ppl")
            cells.append(f"{acc:.3f} / " + ("-" if ppl is None else f"{ppl:.1f}"))
        print(f"| {lang} | " + " | ".join(cells) + " |")
    (out / "bench_tlm.json").write_text(
        json.dumps(
            {
                f"{a_} {s}": {"retrieval": r["retrieval"], "ppl": r["result_ppl"], "per_language": r["per_language"]}
                for (a_, s), r in results.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
