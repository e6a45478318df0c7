"""The whole pipeline on one machine, as a user would type it, stage by stage.

Each stage calls the library function behind a `python -m xlbtm.scripts.<name>` command, in this process, and
logs that command with its flags, so the quickstart is also a living example of the command lines:

  demo corpus -> tokenizer -> dense seed -> clusterer (K) -> assign train/valid -> K experts + a
  compute-matched dense continuation -> consolidate -> HF export -> evaluate ensemble vs dense -> report.

`objective="mlm"` runs the same with XLM-R (masked LM) models, scored by pseudo-perplexity; with
`parallel_data_dir` they train MLM+TLM on translation pairs too and are scored for cross-lingual retrieval.

It is one point of the scaling study (`xlbtm.study`): the same stages, one budget, laid out flat in --out.
Stages whose outputs already exist are resumed by the stages themselves (training resumes from `latest`,
assignment skips finished files), so rerunning after a crash continues instead of starting over; a rerun
with another corpus or other settings is refused rather than served the old stages (`xlbtm.study.stages`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.config import option
from xlbtm.study.pipeline import PipelineConfig, metric_name, prepare, run_point

log = get_logger("quickstart")


@dataclass
class QuickstartConfig(PipelineConfig):
    out: str = option("quickstart_out", "output directory for every artifact", aliases=("--output-dir",))
    expert_steps: int = option(900, "steps per expert; the dense continuation gets K x this many (compute-matched)")


def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Run every stage; returns the headline numbers and where the report is."""
    t0 = time.time()
    counter = iter(range(1, 100))

    def stage(what: str) -> None:
        log.info("[%d/9] %s  (%.0f s elapsed)", next(counter), what, time.time() - t0)

    out = Path(cfg.out).resolve()
    prep = prepare(cfg, stage, points=[(cfg.expert_steps, out)])
    point = run_point(cfg, prep, cfg.expert_steps, out, stage, hf_export=True)
    stage("report")
    summary = {
        "report": point["ensemble_report"],
        "ensemble_ppl": point["ensemble_ppl"],
        "dense_ppl": point["dense_ppl"],
        "oracle_ppl": point["oracle_ppl"],
        "languages_won": point["languages_won"],
        "languages_tied": point.get("languages_tied", 0),  # (a point.json from before ties were counted: 0)
        "languages": point["languages"],
        "num_clusters": cfg.num_clusters,
        "objective": cfg.objective,
        "metric": metric_name(cfg.objective),  # what the *_ppl numbers are: ppl, or MLM pseudo-ppl
        "retrieval": point.get("retrieval"),  # --parallel-data-dir: accuracy@1, ensemble and dense
        "seconds": round(time.time() - t0, 1),
        "out": str(prep.out),
    }
    log.info(
        "done in %.0f s. ensemble %s %.2f vs dense %.2f (K=%d, compute-matched; better in %d of %d "
        "languages, %d tied). report: %s",
        summary["seconds"],
        summary["metric"],
        summary["ensemble_ppl"],
        summary["dense_ppl"],
        cfg.num_clusters,
        summary["languages_won"],
        summary["languages"],
        summary["languages_tied"],
        summary["report"],
    )
    return summary
