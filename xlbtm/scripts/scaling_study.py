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
from xlbtm.config import add_config_args, config_from_args
from xlbtm.study.pipeline import metric_name
from xlbtm.study.scaling import STUDY_MD, StudyConfig, run_study


def build_parser():
    p = make_parser("scaling_study", __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2])
    add_config_args(p, StudyConfig)  # every flag, its default and help: StudyConfig's fields
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    study = run_study(config_from_args(StudyConfig, args))
    m = metric_name(args.objective)
    for p in study["points"]:
        print(
            f"budget {p['expert_steps']}: ensemble {m} {p['ensemble_ppl']:.2f} | dense {m} {p['dense_ppl']:.2f} "
            f"| oracle {m} {p['oracle_ppl'] or float('nan'):.2f} | wins {p['languages_won']}/{p['languages']} "
            "languages" + (f" ({t} tied)" if (t := p.get("languages_tied")) else "")
        )
    print(f"study: {study['config']['out']}/{STUDY_MD}")
    return 0


if __name__ == "__main__":
    run_script("scaling_study", main)
