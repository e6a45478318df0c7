"""python -m xlbtm.scripts.quickstart: the whole pipeline end to end on a built-in demo corpus (or yours)."""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.quickstart import QuickstartConfig


def build_parser():
    from xlbtm.scripts.scaling_study import add_pipeline_args

    d = QuickstartConfig()
    p = make_parser("quickstart", __doc__ + "\n\nEvery stage is logged with the exact command a user would type. "
                    "For the ensemble-vs-dense curve over several budgets, see `python -m xlbtm.scripts.scaling_study`.")
    add_pipeline_args(p, d)
    p.add_argument("--expert-steps", type=int, default=d.expert_steps,
                   help="steps per expert; the dense continuation gets K x this many (compute-matched)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from xlbtm.quickstart import run_quickstart

    summary = run_quickstart(QuickstartConfig(**vars(args)))
    print(f"report: {summary['report']}")
    m = summary["metric"]
    print(f"ensemble {m} {summary['ensemble_ppl']:.2f} | dense {m} {summary['dense_ppl']:.2f} "
          f"| K={summary['num_clusters']} | better in {summary['languages_won']}/{summary['languages']} languages "
          + (f"| retrieval acc@1 ensemble {r['ensemble']:.3f} dense {r['dense']:.3f} "
             if (r := summary.get("retrieval")) else "")
          + f"| {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    run_script("quickstart", main)
