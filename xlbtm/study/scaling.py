"""The scaling study: the ensemble against the compute-matched dense model at several budgets, one command.

    cfg = StudyConfig(out="study_out", data_dir="corpus", num_clusters=4, budgets=[100, 300, 900])
    study = run_study(cfg)      # -> study.json, study.md, study.png in cfg.out

A budget is the number of optimizer steps per expert; the dense model gets K times as many at the same tokens
per step, so every point compares two sides that consumed the same training tokens. All points branch from
one seed and share the tokenizer, clusterer and cluster assignment. Each point is a full run of
train_experts -> consolidate -> eval_ensemble (`xlbtm.study.pipeline`), so rerunning the command resumes:
finished points are read back from their point.json, unfinished training resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.config import option
from xlbtm.errors import UsageError
from xlbtm.io import atomic_open, write_json
from xlbtm.study.pipeline import PipelineConfig, metric_name, prepare, run_point
from xlbtm.study.report import plot_study, render_markdown

log = get_logger("study")

STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_PNG = "study.png"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


@dataclass
class StudyConfig(PipelineConfig):
    out: str = option("study_out", "output directory for every artifact", aliases=("--output-dir",))
    budgets: list[int] = option(
        help="steps per expert at each point, comma-separated (dense: K x each)",
        default_factory=lambda: [100, 300, 900],
        type=_ints,
        render=lambda v: [",".join(map(str, v))],
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise UsageError("--budgets must be positive step counts, e.g. 100,300,900")
        self.budgets = sorted(set(int(b) for b in self.budgets))


def point_dir(out: Path, expert_steps: int) -> Path:
    return out / f"budget_{expert_steps}"


def crossover(points: list[dict]) -> dict | None:
    """Where the ensemble's curve crosses below the dense one (training tokens, log-interpolated between the
    last budget it loses and the first it wins); None when it never wins, `before_first` when it always does."""
    prev = None
    for p in points:
        if p["ensemble_ppl"] < p["dense_ppl"]:
            if prev is None:
                return {
                    "train_tokens": p["dense_train_tokens"],
                    "expert_steps": p["expert_steps"],
                    "before_first": True,
                }
            # the relative gap is ~linear in log(tokens) near the crossing
            g0, g1 = prev["relative"], p["relative"]
            x0, x1 = math.log(prev["dense_train_tokens"]), math.log(p["dense_train_tokens"])
            x = x0 + (x1 - x0) * g0 / (g0 - g1) if g0 != g1 else x1
            return {
                "train_tokens": int(round(math.exp(x))),
                "expert_steps": prev["expert_steps"] * math.exp(x - x0),
                "between": [prev["expert_steps"], p["expert_steps"]],
                "before_first": False,
            }
        prev = p
    return None


def run_study(cfg: StudyConfig) -> dict:
    from xlbtm.data.dataset import corpus_tokens_per_sample

    t0 = time.time()
    out = Path(cfg.out).resolve()
    n_stages = 2 + len(cfg.budgets)
    counter = iter(range(1, 10**6))

    def stage(what: str) -> None:
        log.info("%s  (%.0f s elapsed)", what, time.time() - t0)

    log.info(f"[{next(counter)}/{n_stages}] prepare: corpus, tokenizer, seed, clusterer, assignment")
    prep = prepare(cfg, stage, points=[(b, point_dir(out, b)) for b in cfg.budgets])
    points = []
    for b in cfg.budgets:
        log.info(f"[{next(counter)}/{n_stages}] budget: {b} steps per expert, {cfg.num_clusters * b} dense steps")
        p = run_point(cfg, prep, b, point_dir(out, b), stage)
        m = metric_name(cfg.objective)  # not p["metric"]: points written before it existed lack it
        log.info(
            f"budget {b}: ensemble {m} {p['ensemble_ppl']:.2f} | dense {m} "
            f"{p['dense_ppl']:.2f} | oracle {p['oracle_ppl'] or float('nan'):.2f} | wins "
            f"{p['languages_won']}/{p['languages']} languages"
            + (f" ({t} tied)" if (t := p.get("languages_tied")) else "")
        )
        points.append(p)
    study = {
        "format": "xlbtm-study/1",
        "config": {k: v for k, v in vars(cfg).items()},
        "data": str(prep.data),
        "languages": prep.languages,
        "tokens_per_step": cfg.batch_size * corpus_tokens_per_sample(cfg.objective, cfg.tokens_per_sample),
        "points": points,
        "crossover": crossover(points),
        "seconds": round(time.time() - t0, 1),
    }
    log.info(f"[{next(counter)}/{n_stages}] report")
    write_json(out / STUDY_JSON, study)

    with atomic_open(out / STUDY_MD) as f:
        f.write(render_markdown(study))
    plot_study(out / STUDY_PNG, study)
    log.info(f"study: {out / STUDY_MD}, {out / STUDY_PNG}")
    return study
