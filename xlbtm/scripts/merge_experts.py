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

from xlbtm.cli import make_parser, run_script
from xlbtm.config import add_config_args, config_from_args
from xlbtm.ensemble.config import MergeConfig


def build_parser():
    p = make_parser("merge_experts", __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_config_args(p, MergeConfig)  # every flag, its default and help: MergeConfig's fields
    return p


def main(argv=None):
    from xlbtm.ensemble.merge import run_merge

    cfg = config_from_args(MergeConfig, build_parser().parse_args(argv))
    experts, weights, method, out = run_merge(cfg)
    print(
        f"merged {len(experts)} experts with {method} weights "
        + ", ".join(f"{e.cluster}:{w:.4f}" for e, w in zip(experts, weights))
        + f" -> {out['consolidated'].parent}"
    )
    return 0


if __name__ == "__main__":
    run_script("merge_experts", main)
