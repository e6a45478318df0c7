"""Evaluate an ensemble of experts (or one dense model): perplexity overall, per language, per cluster.

    python -m xlbtm.scripts.eval_ensemble --data-dir D --data-subset valid --path-to-clusterer C \
        --experts-dir SERIALIZATION/8_clusters --temperature 0.1 0.05 --topk -1 2 \
        --ensemble-type clustering --max-valid-steps 500 --job-dir OUT [--run local|slurm]

Each expert scores the documents once (cached under OUT/scores/); every --temperature x --topk setting
reuses those scores. Writes OUT/result.json, OUT/report.md and OUT/ppl_by_language.png. Encoder experts:
`--parallel-data DIR` adds cross-lingual retrieval accuracy@1 per language (result.json `retrieval`).
"""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.config import add_config_args, config_from_args
from xlbtm.ensemble.config import EvalConfig
from xlbtm.launch.site import add_slurm_args, site_from_args


def build_parser():
    p = make_parser("eval_ensemble", __doc__.split("\n\n")[0])
    add_config_args(p, EvalConfig)  # every flag, its default and help: EvalConfig's fields
    add_slurm_args(p)
    return p


def main(argv=None):
    from xlbtm.ensemble.evaluate import run_eval

    args = build_parser().parse_args(argv)
    cfg = config_from_args(EvalConfig, args, site=site_from_args(args) if args.run == "slurm" else None)
    result = run_eval(cfg)
    print(
        f"result_ppl {result['result_ppl']:.4f}  ({result['documents']} documents, {result['tokens']} tokens) "
        f"-> {cfg.job_dir}/result.json"
    )
    if "retrieval" in result:
        r = result["retrieval"]
        print(f"retrieval accuracy@1 {r['accuracy']:.4f} tgt->src, {r['src2tgt']:.4f} src->tgt ({r['pairs']} pairs)")
    return 0


if __name__ == "__main__":
    run_script("eval_ensemble", main)
