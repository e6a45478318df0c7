"""python -m xlbtm.scripts.scaling_study: the ensemble vs the compute-matched dense model over several budgets.

    python -m xlbtm.scripts.scaling_study --data-dir CORPUS --num-clusters 4 --seed-steps 900 \\
        --budgets 150,450,1350 --out STUDY [--clustering tfidf|typological] [--run local|slurm]

For each budget B (optimizer steps per expert) it trains K experts x B steps and a dense model x K*B steps,
both branched from one seed, through the real train_experts / consolidate / eval_ensemble entry points, and
writes STUDY/study.json, STUDY/study.md and STUDY/study.png (validation perplexity against training tokens:
dense, ensemble, oracle, with the crossover marked; per-language panel). Rerun the same command to resume.
"""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.study.scaling import StudyConfig


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def add_pipeline_args(p, d) -> None:
    """The flags the quickstart and the study share (defaults from the config dataclass `d`)."""
    from xlbtm.study.pipeline import OBJECTIVES

    p.add_argument("--out", default=d.out, help="output directory for every artifact")
    p.add_argument("--data-dir", default=None,
                   help="your corpus (c-BTM layout: train/<shard>/*.jsonl, valid/*.jsonl); default: generate the "
                        "demo corpus")
    p.add_argument("--num-clusters", type=int, default=d.num_clusters, help="K experts")
    p.add_argument("--clustering", choices=["tfidf", "typological"], default=d.clustering,
                   help="tfidf: subword TF-IDF + balanced k-means, ensemble routed by the prefix's cluster "
                        "posterior (c-BTM); typological: languages grouped by URIEL, routed by `lang` (X-ELM)")
    p.add_argument("--num-train-docs", type=int, default=d.num_train_docs, help="demo corpus: train documents")
    p.add_argument("--num-valid-docs", type=int, default=d.num_valid_docs, help="demo corpus: valid documents")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="SentencePiece vocabulary size")
    p.add_argument("--seed-model", default=None,
                   help="an existing seed (HF dir, metaseq/fairseq or xlbtm .pt) instead of training one from scratch "
                        "for --seed-steps; its tokenizer is used")
    p.add_argument("--tokenizer", default=None, help="with --seed-model: its tokenizer dir (default: the seed's own)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=d.objective,
                   help="clm: XGLM seed, experts and dense model, scored by perplexity; mlm: XLM-R ones trained "
                        "with masked LM, scored by pseudo-perplexity (passed to train_experts --objective)")
    p.add_argument("--parallel-data-dir", default=d.parallel_data_dir,
                   help="with --objective mlm: translation pairs (<dir>/train[, valid]/<shard>/*.jsonl of {src, tgt, "
                        "src_lang, tgt_lang}, e.g. ../shared/corpora/gettext): experts and the dense model train "
                        "MLM+TLM (the pairs clustered by their target side), and both are scored for cross-lingual "
                        "retrieval on the valid pairs")
    p.add_argument("--tlm-ratio", type=float, default=d.tlm_ratio,
                   help="with --parallel-data-dir: the share of training samples that are TLM (default 0.5)")
    p.add_argument("--model-size", default=None,
                   help="preset of the seed model trained from scratch (default: debug for clm, debug-xlmr for mlm)")
    p.add_argument("--tokens-per-sample", type=int, default=d.tokens_per_sample,
                   help="tokens per training sample, for the seed, the experts and the dense model alike")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per training step")
    p.add_argument("--seed-steps", type=int, default=d.seed_steps, help="training steps of the dense seed")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate,
                   help="peak learning rate of experts and dense alike (the seed's too)")
    p.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction,
                   help="linear warm-up over this fraction of each run's steps (same shape on both sides)")
    p.add_argument("--step-allocation", choices=["equal", "proportional"], default=d.step_allocation,
                   help="experts' share of the K x steps: equal, or proportional to each cluster's training tokens")
    p.add_argument("--temperature", type=float, default=d.temperature, help="routing temperature (tfidf)")
    p.add_argument("--max-valid-docs", type=int, default=None, help="evaluate at most this many valid documents")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the demo corpus, the clusterer, data order and initializations")
    p.add_argument("--run", choices=["local", "slurm"], default=d.run,
                   help="where training, assignment and scoring jobs run")


def build_parser():
    d = StudyConfig()
    p = make_parser("scaling_study", __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2])
    add_pipeline_args(p, d)
    p.add_argument("--budgets", type=_ints, default=d.budgets,
                   help="steps per expert at each point, comma-separated (dense: K x each)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from xlbtm.study.scaling import STUDY_MD, run_study

    from xlbtm.study.pipeline import metric_name

    study = run_study(StudyConfig(**vars(args)))
    m = metric_name(args.objective)
    for p in study["points"]:
        print(f"budget {p['expert_steps']}: ensemble {m} {p['ensemble_ppl']:.2f} | dense {m} {p['dense_ppl']:.2f} "
              f"| oracle {m} {p['oracle_ppl'] or float('nan'):.2f} | wins {p['languages_won']}/{p['languages']} "
              "languages")
    print(f"study: {study['config']['out']}/{STUDY_MD}")
    return 0


if __name__ == "__main__":
    run_script("scaling_study", main)
