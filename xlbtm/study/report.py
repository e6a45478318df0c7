"""study.md (tables) and study.png (curves) from a study.json dict (`xlbtm.study.scaling`)."""

from __future__ import annotations

import math
import os

from xlbtm.io import atomic_path


def _f(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _metric(study: dict) -> tuple[str, str]:
    """(short, long) name of what the study's *_ppl numbers are; studies before --objective were clm."""
    if study["config"].get("objective", "clm") == "clm":
        return "ppl", "perplexity"
    return "pseudo-ppl", "pseudo-perplexity (masked LM)"


def render_markdown(study: dict) -> str:
    c = study["config"]
    pts = study["points"]
    K = c["num_clusters"]
    m, metric = _metric(study)
    routing = f"by the prefix's cluster posterior, T={c['temperature']}" if c["clustering"] == "tfidf" else "by `lang`"
    md = [
        f"# Scaling study: {K} experts vs the compute-matched dense model\n\n",
        f"Corpus `{study['data']}` ({len(study['languages'])} languages); {c['clustering']} clusters, "
        f"ensemble routed {routing}; {c.get('objective', 'clm')} objective, scored by validation {metric}; "
        f"seed: {c['model_size']} x {c['seed_steps']} steps; "
        f"{study['tokens_per_step']} tokens per step; lr {c['learning_rate']}, warm-up "
        f"{c['warmup_fraction']:.0%} of each run, linear decay; {c['step_allocation']} step allocation.\n\n"
        "Both sides branch from the same seed and consume the same training tokens (columns below, read "
        "from the checkpoints); the oracle picks the best expert per document (an upper bound on "
        "document-level routing).\n\n",
        f"| steps/expert | dense steps | train tokens (ensemble / dense) | dense {m} | ensemble {m} | oracle {m} "
        "| ensemble vs dense | languages won |\n|---:|---:|---|---:|---:|---:|---:|---:|\n",
    ]
    for p in pts:
        md.append(
            f"| {p['expert_steps']} | {p['dense_steps']} | {_tokens(p['ensemble_train_tokens'])} / "
            f"{_tokens(p['dense_train_tokens'])} | {_f(p['dense_ppl'])} | {_f(p['ensemble_ppl'])} | "
            f"{_f(p['oracle_ppl'])} | {_pct(p['relative'])} | {p['languages_won']}/{p['languages']}"
            + (f" ({t} tied)" if (t := p.get("languages_tied")) else "")
            + " |\n"
        )
    x = study.get("crossover")
    if x is None:
        md.append(
            "\nThe ensemble does not beat the dense model at any budget studied; train longer (larger --budgets).\n"
        )
    elif x.get("before_first"):
        md.append(
            f"\nThe ensemble beats the dense model from the smallest budget on "
            f"({x['expert_steps']} steps per expert).\n"
        )
    else:
        md.append(
            f"\nCrossover: the ensemble overtakes the dense model at about {_tokens(x['train_tokens'])} "
            f"training tokens (~{x['expert_steps']:.0f} steps per expert, between the "
            f"{x['between'][0]} and {x['between'][1]} budgets).\n"
        )
    langs = sorted({lang for p in pts for lang in p["per_language"]})
    if langs:
        md.append(f"\n## Ensemble vs dense per language (relative {metric} change; negative = ensemble better)\n\n")
        md.append("| lang | eval tokens | " + " | ".join(f"{p['expert_steps']} steps" for p in pts) + " |\n")
        md.append("|---|---:|" + "---:|" * len(pts) + "\n")
        for lang in langs:
            cells = []
            for p in pts:
                v = p["per_language"].get(lang)
                cells.append("-" if not v or v["ensemble"] is None else _pct(v["ensemble"] / v["dense"] - 1))
            tok = next((p["per_language"][lang]["tokens"] for p in pts if lang in p["per_language"]), 0)
            md.append(f"| {lang} | {tok} | " + " | ".join(cells) + " |\n")
    md.append(
        f"\nPlot: `study.png`. Per-point reports: `budget_<steps>/eval/ensemble/report.md`. "
        f"Took {study['seconds']:.0f} s.\n"
    )
    return "".join(md)


def plot_study(path: str | os.PathLike, study: dict) -> None:
    """Left: validation perplexity vs training tokens (dense, ensemble, oracle; crossover marked).
    Right: the ensemble's relative change vs dense per language at each budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = study["points"]
    m, metric = _metric(study)
    xs = [p["dense_train_tokens"] for p in pts]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    ax.plot(xs, [p["dense_ppl"] for p in pts], "o-", label="dense (compute-matched)")
    ax.plot(xs, [p["ensemble_ppl"] for p in pts], "s-", label=f"ensemble, K={study['config']['num_clusters']}")
    if all(p.get("oracle_ppl") is not None for p in pts):
        ax.plot(xs, [p["oracle_ppl"] for p in pts], "^--", label="oracle (best expert per doc)", alpha=0.7)
    x = study.get("crossover")
    if x is not None and not x.get("before_first"):
        ax.axvline(x["train_tokens"], color="gray", ls=":", label=f"crossover ~{_tokens(x['train_tokens'])} tokens")
    if len(xs) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("training tokens after the seed (each side)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("ensemble vs dense at equal compute")
    ax.legend(fontsize=8)
    langs = sorted({lang for p in pts for lang in p["per_language"]})
    for lang in langs:
        ys = []
        for p in pts:
            v = p["per_language"].get(lang)
            ys.append(float("nan") if not v or v["ensemble"] is None else 100 * (v["ensemble"] / v["dense"] - 1))
        ax2.plot(xs, ys, "o-", label=lang, lw=1, ms=3)
    ax2.axhline(0, color="black", lw=0.8)
    if len(xs) > 1:
        ax2.set_xscale("log")
    ax2.set_xlabel("training tokens after the seed (each side)")
    ax2.set_ylabel(f"ensemble vs dense {m}, % (below 0: ensemble better)")
    ax2.set_title("per language")
    if len(langs) <= 24:
        ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
