r"""Merge experts into one model by parameter averaging (c-BTM's --average, BTM's posterior-weighted average).

    python -m xlbtm.scripts.merge_experts --experts-dir RUNS/8_clusters --output-dir MERGED
    python -m xlbtm.scripts.merge_experts --experts-dir RUNS/8_clusters --experts 0,2,5 \
        --weights 0.5,0.3,0.2 --output-dir MERGED
    python -m xlbtm.scripts.merge_experts --experts-dir RUNS/8_clusters --weights posterior \
        --data-dir D --data-subset valid --max-docs 500 --output-dir MERGED

--weights: `uniform` (default, 1/K each), explicit weights (one per selected expert in cluster order,
non-negative, summing to 1), or `posterior`: the mean over --data-dir's held-out documents of the experts'
posterior p(k | document) (Bayes' rule with a uniform prior over the experts' document log-likelihoods;
causal LMs only). Experts must share the seed model, tokenizer, objective and architecture.

Writes MERGED/consolidated.pt, MERGED/hf/ and MERGED/expert.json (recording the experts and weights), so
`eval_ensemble --ensemble-type dense --model-paths MERGED` evaluates it like any model.
"""

from __future__ import annotations

import argparse

from xlbtm.cli import make_parser, run_script


def _cluster_ids(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated cluster ids like 0,2, got {s!r}") from None


def build_parser():
    p = make_parser("merge_experts", __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--experts-dir", required=True, help="directory holding the expert run dirs (expert.json)")
    p.add_argument("--experts", type=_cluster_ids, default=None, metavar="IDS",
                   help="cluster ids of the experts to merge, e.g. 0,2; unset: every expert found")
    p.add_argument("--weights", default="uniform",
                   help="uniform | posterior | comma-separated weights, one per selected expert in cluster order, "
                        "non-negative and summing to 1")
    p.add_argument("--data-dir", "--path-to-data", dest="data_dir", default=None, help="corpus root whose held-out documents give --weights posterior")
    p.add_argument("--data-subset", default="valid", help="split for --weights posterior: valid or valid/<subset>")
    p.add_argument("--max-docs", type=int, default=None,
                   help="--weights posterior: use at most this many documents of the split")
    p.add_argument("--job-dir", default=None,
                   help="--weights posterior: cache the tokenized documents and per-expert scores here (an "
                        "eval_ensemble job dir of the same split is reused); default: a temporary dir")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward pass (posterior)")
    p.add_argument("--device", default=None,
                   help="scoring device: cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when available, "
                        "else cpu)")
    p.add_argument("--output-dir", required=True,
                   help="where the merged model goes: consolidated.pt, hf/, expert.json (replaced whole)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from xlbtm.ensemble.experts import find_experts
    from xlbtm.ensemble.merge import check_mergeable, check_output_dir, merge_experts, parse_weights, \
        resolve_weights, select_experts
    from xlbtm.errors import UsageError

    if args.batch_tokens <= 0:
        raise UsageError("--batch-tokens must be positive")
    experts = select_experts(find_experts(args.experts_dir), args.experts)
    check_mergeable(experts)
    parse_weights(args.weights, len(experts))  # a bad --weights fails before any scoring
    if args.data_dir is not None and args.weights.strip() != "posterior":
        raise UsageError("--data-dir is only read by --weights posterior")
    # not inside --experts-dir either: the next find_experts there would take the merge for an expert
    check_output_dir(args.output_dir, experts, {"--experts-dir": args.experts_dir, "--data-dir": args.data_dir,
                                                "--job-dir": args.job_dir})
    if args.job_dir is not None:
        from xlbtm.io import refuse_overlap

        refuse_overlap({"--job-dir": args.job_dir},
                       {"--data-dir": args.data_dir, **{f"expert {e.run_dir}": e.run_dir for e in experts}})
    weights, method = resolve_weights(args.weights, experts, data_dir=args.data_dir,
                                      subset=args.data_subset.strip("/"), max_docs=args.max_docs,
                                      job_dir=args.job_dir, device=args.device, batch_tokens=args.batch_tokens)
    out = merge_experts(experts, weights, args.output_dir, method=method)
    print(f"merged {len(experts)} experts with {method} weights "
          + ", ".join(f"{e.cluster}:{w:.4f}" for e, w in zip(experts, weights)) + f" -> {out['consolidated'].parent}")
    return 0


if __name__ == "__main__":
    run_script("merge_experts", main)
