"""Growing an ensemble with new languages (issue #15): X-ELM's HMR claim, nearest <= seed, on a real corpus.

    .venv/bin/python benchmarks/bench_grow.py [--data-dir ../shared/corpora/manpages] [--new-langs pl,cs]
        [--num-clusters 4] [--seed-steps 1500] [--expert-steps 300] [--new-steps 300] [--out bench_grow_out]

1. The corpus without the new languages (train and valid) is the "old" corpus. A SentencePiece tokenizer is
   fitted on the whole corpus (a multilingual seed's tokenizer covers the new languages too), a dense debug
   XGLM seed is trained on the old corpus, a typological clusterer (balanced, K clusters) groups the old
   languages, and K experts train from the seed.
2. For each --init (nearest, average, seed), a copy of the experts is grown with the new languages by
   `add_experts`, every new expert trained for --new-steps (equal compute).
3. Each grown ensemble is evaluated with language routing (`eval_ensemble --ensemble-type lang`) on the whole
   valid split: perplexity of the new languages per init, and of the old ones (which must not change: their
   experts and routing are untouched).
Every stage resumes (a rerun skips what is done). Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INITS = ("nearest", "average", "seed")


def filter_corpus(src: Path, dst: Path, drop: set[str]) -> None:
    """`src` without the documents of `drop` (same layout and file names)."""
    if (dst / ".done").is_file():
        return
    for f in sorted(src.rglob("*.jsonl")):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(f, encoding="utf-8") as fi, open(out, "w", encoding="utf-8") as fo:
            for line in fi:
                if json.loads(line).get("lang") not in drop:
                    fo.write(line)
    (dst / ".done").write_text("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "corpora" / "manpages"))
    ap.add_argument("--new-langs", default="pl,cs")
    ap.add_argument("--num-clusters", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--seed-steps", type=int, default=1500)
    ap.add_argument("--expert-steps", type=int, default=300)
    ap.add_argument("--new-steps", type=int, default=300)
    ap.add_argument("--inits", default=",".join(INITS))
    ap.add_argument("--out", default="bench_grow_out")
    a = ap.parse_args()

    from xlbtm.cli import setup_logging
    from xlbtm.grow import AddExpertsRequest, add_experts
    from xlbtm.study.pipeline import PipelineConfig, _cluster, _train_flags, consolidate, evaluate, train_experts
    from xlbtm.tokenizer import train_tokenizer_from_corpus
    from xlbtm.train.plan import TrainExpertsRequest

    setup_logging("bench_grow")
    t0 = time.time()
    out, data, new = Path(a.out).resolve(), Path(a.data_dir).resolve(), a.new_langs.split(",")
    old_data = out / "old_data"
    filter_corpus(data, old_data, set(new))
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer_from_corpus(data, tok, vocab_size=a.vocab_size, style="xglm")
    cfg = PipelineConfig(out=str(out), data_dir=str(old_data), num_clusters=a.num_clusters, clustering="typological")
    seed = out / "seed" / "1_clusters" / "seed.cluster0" / "consolidated.pt"
    if not seed.is_file():
        flags = _train_flags(cfg, old_data, tok, a.seed_steps)
        train_experts(
            {
                **flags,
                "--seed-model": cfg.model_size,
                "--num-clusters": 1,
                "--warmup-updates": a.seed_steps // 10,
                "--serialization-dir": str(out / "seed"),
                "--run-name": "seed",
            }
        )
        consolidate(seed.parent)
    clusterer, clusters, old_langs = _cluster(cfg, old_data, tok, out, lambda what: print(what, flush=True))
    ser = out / "experts"
    flags = _train_flags(cfg, old_data, tok, a.expert_steps)
    train_experts(
        {
            **flags,
            "--seed-model": str(seed),
            "--num-clusters": a.num_clusters,
            "--path-to-clusters-dir": str(clusters),
            "--serialization-dir": str(ser),
            "--run-name": "typo",
        }
    )
    base = ser / f"{a.num_clusters}_clusters"
    train_flags = {
        k[2:].replace("-", "_"): v
        for k, v in _train_flags(cfg, data, tok, a.new_steps).items()
        if k not in ("--path-to-data", "--tokenizer")
    }
    rows = {}
    for init in a.inits.split(","):
        grown = out / f"grown_{init}" / f"{a.num_clusters}_clusters"
        if not grown.exists():
            shutil.copytree(base, grown, ignore=shutil.ignore_patterns("grown", "logs", "data-bin"))
        t = time.time()
        train = TrainExpertsRequest(
            **train_flags, seed_model="", num_clusters=1, path_to_data=str(data), serialization_dir=""
        )
        add_experts(
            AddExpertsRequest(
                experts_dir=str(grown),
                path_to_clusterer=str(clusterer),
                langs=new,
                path_to_data=str(data),
                output_clusterer=str(out / f"clusterer+{init}"),
                init=init,
                train=train,
            )
        )
        res = evaluate(
            {
                "--data-dir": str(data),
                "--data-subset": "valid",
                "--job-dir": str(out / f"eval_{init}"),
                "--ensemble-type": "lang",
                "--path-to-clusterer": str(out / f"clusterer+{init}"),
                "--experts-dir": str(grown),
            }
        )
        parents = {}
        for k in range(a.num_clusters, a.num_clusters + len(new)):
            info = json.loads((grown / f"typo.cluster{k}" / "expert.json").read_text())["init"]
            parents[info["lang"]] = info.get("parent_cluster", "avg" if init == "average" else "seed")
        rows[init] = {"per_language": res["per_language"], "seconds": round(time.time() - t), "parents": parents}
    print(
        f"\n{a.num_clusters} typological experts on {len(old_langs)} languages; new: {', '.join(new)}; "
        f"seed {a.seed_steps} steps, experts {a.expert_steps}, new experts {a.new_steps} steps each "
        f"({time.time() - t0:.0f} s in all)\n"
    )
    inits = list(rows)
    print("| language | " + " | ".join(f"--init {i}" for i in inits) + " |")
    print("|---|" + "---:|" * len(inits))
    for lang in new:
        print(f"| {lang} (new) | " + " | ".join(f"{rows[i]['per_language'][lang]['ppl']:.2f}" for i in inits) + " |")
    for lang in sorted(old_langs):
        cells = [rows[i]["per_language"].get(lang, {}).get("ppl") for i in inits]
        print(f"| {lang} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    print("\nparents (cluster of the nearest expert):", json.dumps({i: rows[i]["parents"] for i in inits}))
    (out / "bench_grow.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
