"""python -m xlbtm.scripts.quickstart: the whole pipeline end to end on a built-in demo corpus (or yours)."""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.quickstart import QuickstartConfig


def build_parser():
    d = QuickstartConfig()
    p = make_parser("quickstart", __doc__ + "\n\nEvery stage is logged with the exact command a user would type.")
    p.add_argument("--out", default=d.out, help="output directory for every artifact")
    p.add_argument("--data-dir", default=None,
                   help="your corpus (c-BTM layout: train/<shard>/*.jsonl, valid/*.jsonl); default: generate the demo corpus")
    p.add_argument("--num-clusters", type=int, default=d.num_clusters, help="K experts")
    p.add_argument("--num-train-docs", type=int, default=d.num_train_docs, help="demo corpus: train documents")
    p.add_argument("--num-valid-docs", type=int, default=d.num_valid_docs, help="demo corpus: valid documents")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="SentencePiece vocabulary size")
    p.add_argument("--tokens-per-sample", type=int, default=d.tokens_per_sample)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed-steps", type=int, default=d.seed_steps, help="training steps of the dense seed")
    p.add_argument("--expert-steps", type=int, default=d.expert_steps,
                   help="steps per expert; the dense continuation gets K x this many (compute-matched)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--max-valid-docs", type=int, default=None, help="evaluate at most this many valid documents")
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from xlbtm.quickstart import run_quickstart

    summary = run_quickstart(QuickstartConfig(**vars(args)))
    print(f"report: {summary['report']}")
    print(f"ensemble ppl {summary['ensemble_ppl']:.2f} | dense ppl {summary['dense_ppl']:.2f} "
          f"| K={summary['num_clusters']} | {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    run_script("quickstart", main)
