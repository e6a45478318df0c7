"""Evaluate an ensemble of experts (or one dense model): perplexity overall, per language, per cluster.

    python -m xlbtm.scripts.eval_ensemble --data-dir D --data-subset valid --path-to-clusterer C \
        --experts-dir SERIALIZATION/8_clusters --temperature 0.1 0.05 --topk -1 2 \
        --ensemble-type clustering --max-valid-steps 500 --job-dir OUT [--run local|slurm]

Each expert scores the documents once (cached under OUT/scores/); every --temperature x --topk setting
reuses those scores. Writes OUT/result.json, OUT/report.md and OUT/ppl_by_language.png. Encoder experts:
`--parallel-data DIR` adds cross-lingual retrieval accuracy@1 per language (result.json `retrieval`).
"""

from __future__ import annotations

import argparse

from xlbtm.cli import add_skip_bad_lines_arg, make_parser, run_script
from xlbtm.launch.site import add_slurm_args, site_from_args
from xlbtm.errors import UsageError


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _cluster_ids(s: str) -> list[int]:
    try:
        return _ints(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated cluster ids like 2,5, got {s!r}") from None


def build_parser():
    p = make_parser("eval_ensemble", __doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="corpus root (c-BTM layout)")
    p.add_argument("--data-subset", default="valid", help="split to evaluate: valid or valid/<subset>")
    p.add_argument("--path-to-clusterer", default=None,
                   help="clusterer artifact dir (required for clustering and lang; checked against the experts)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-paths", default=None,
                     help="comma-separated expert run dirs or consolidated.pt files (order does not matter: "
                          "experts are matched to clusters by expert.json)")
    src.add_argument("--experts-dir", default=None, help="directory holding the expert run dirs")
    p.add_argument("--temperature", nargs="+", type=_floats, default=None,
                   help="routing temperature(s), default 0.1; several values (or a comma list) sweep on "
                        "the cached scores")
    p.add_argument("--topk", nargs="+", type=_ints, default=None,
                   help="experts kept per token, default -1 (all); several values sweep on the cached scores")
    p.add_argument("--ensemble-type", default="clustering",
                   choices=["clustering", "uniform", "lang", "oracle", "dense", "average"],
                   help="how experts are mixed. clustering: by the cluster posterior of each token's prefix "
                        "(c-BTM; needs --path-to-clusterer with centroids); lang: by each document's language "
                        "label through a typological clusterer (X-ELM); uniform: equal weights; oracle: each "
                        "document scored by its best expert (an upper bound, not a method); dense: one model "
                        "(--model-paths of one run); average: one model whose weights are the experts' mean")
    p.add_argument("--exclude-experts", type=_cluster_ids, default=[], metavar="IDS",
                   help="cluster ids of experts to switch off (data opt-out), e.g. 2,5: they are not loaded or "
                        "scored (their run dirs may be gone) and every mixture is renormalized over the remaining "
                        "experts; documents a lang ensemble would send to an excluded expert get the uniform "
                        "mixture of the rest. Reported in result.json settings.excluded_experts")
    p.add_argument("--cbtm-compat", action="store_true",
                   help="c-BTM's weights: softmax(-dist^2 / T) with dist already a squared distance")
    p.add_argument("--max-valid-steps", type=int, default=None,
                   help="evaluate at most this many documents (one document per step)")
    p.add_argument("--job-dir", required=True, help="output dir: score caches, result.json, report.md, plot")
    p.add_argument("--run", choices=["local", "slurm"], default=None,
                   help="score each expert as a separate job (default: in this process)")
    p.add_argument("--dense-result", default=None,
                   help="result.json (or its dir) of the dense baseline, compared per language in report.md")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward pass")
    p.add_argument("--context-window", type=int, default=None,
                   help="causal LMs: tokens per scoring window (default: the context the experts were trained "
                        "with, expert.json tokens_per_sample); documents are scored whole, window by window. "
                        "Masked LMs: the one window read per document (same default)")
    p.add_argument("--stride", type=int, default=None,
                   help="causal LMs: step between windows (default: the window, c-BTM's non-overlapping blocks; "
                        "smaller gives every later token at least window - stride tokens of context)")
    p.add_argument("--parallel-data", default=None, metavar="DIR",
                   help="encoder (masked-LM) experts: also measure cross-lingual retrieval on the translation "
                        "pairs of DIR/<--parallel-subset> ({src, tgt, src_lang, tgt_lang} jsonl): accuracy@1 per "
                        "language of finding each tgt's own src by cosine of mean-pooled states, added to "
                        "result.json (retrieval) and report.md")
    p.add_argument("--parallel-subset", default="valid", help="split of --parallel-data (default valid)")
    p.add_argument("--retrieval-batch-size", type=int, default=1000,
                   help="candidate pool: each language's pairs are split into blocks of at most this many "
                        "(near-equal size) and each tgt is matched against its block's sources (default 1000)")
    p.add_argument("--retrieval-routing", choices=["target", "own"], default="target",
                   help="ensembles: target (default) reads both sides of a pair with the experts its target side "
                        "is routed to (those of the pool's language); own routes each side by its own text / lang")
    p.add_argument("--retrieval-centering", choices=["pool", "none"], default="pool",
                   help="pool (default): center each side's sentence vectors on their pool's mean before the "
                        "cosines (removes the direction all of a language's sentences share); none: raw cosines")
    p.add_argument("--retrieval-max-pairs", type=int, default=None,
                   help="read at most this many pairs per language (the first in file order; default all)")
    p.add_argument("--device", default=None,
                   help="scoring device: cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when available, "
                        "else cpu)")
    add_skip_bad_lines_arg(p)
    add_slurm_args(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval

    if args.batch_tokens <= 0:
        raise UsageError("--batch-tokens must be positive")
    cfg = EvalConfig(
        data_dir=args.data_dir, data_subset=args.data_subset.strip("/"), job_dir=args.job_dir,
        ensemble_type=args.ensemble_type, path_to_clusterer=args.path_to_clusterer,
        model_paths=[m for m in (args.model_paths or "").split(",") if m],
        experts_dir=args.experts_dir,
        temperatures=[t for group in (args.temperature or [[0.1]]) for t in group],
        topks=[k for group in (args.topk or [[-1]]) for k in group],
        cbtm_compat=args.cbtm_compat, max_valid_steps=args.max_valid_steps, run=args.run,
        dense_result=args.dense_result, batch_tokens=args.batch_tokens, device=args.device,
        context_window=args.context_window, stride=args.stride, exclude_experts=args.exclude_experts,
        parallel_data=args.parallel_data, parallel_subset=args.parallel_subset.strip("/"),
        retrieval_batch_size=args.retrieval_batch_size, retrieval_max_pairs=args.retrieval_max_pairs,
        retrieval_routing=args.retrieval_routing, retrieval_centering=args.retrieval_centering,
        skip_bad_lines=args.skip_bad_lines, site=site_from_args(args) if args.run == "slurm" else None,
    )
    result = run_eval(cfg)
    print(f"result_ppl {result['result_ppl']:.4f}  ({result['documents']} documents, {result['tokens']} tokens) "
          f"-> {args.job_dir}/result.json")
    if "retrieval" in result:
        r = result["retrieval"]
        print(f"retrieval accuracy@1 {r['accuracy']:.4f} tgt->src, {r['src2tgt']:.4f} src->tgt ({r['pairs']} pairs)")
    return 0


if __name__ == "__main__":
    run_script("eval_ensemble", main)
