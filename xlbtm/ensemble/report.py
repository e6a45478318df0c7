"""Ensemble results on disk: result.json (machine-readable), report.md (tables), ppl_by_language.png.

result.json keys (stable; c-BTM readers look for `result_ppl`):
    dataset, ensemble_type, result_ppl, tokens, documents,
    per_language: {lang: {ppl, tokens, documents}}, per_cluster: {k: {ppl, tokens, documents}},
    top_expert: {k: fraction of scored tokens where expert k carried the most weight},
    oracle: {result_ppl, per_language} of the best single expert per document (K > 1; else null),
    settings: {temperature, topk, cbtm_compat, num_experts, excluded_experts (cluster ids switched off), ...},
    sweep: [{temperature, topk, result_ppl, per_language[, retrieval]}],
    retrieval (only with --parallel-data; xlbtm.ensemble.retrieval): {accuracy (tgt -> src accuracy@1, share of
        all pairs), src2tgt, pairs, per_language: {lang: {accuracy, src2tgt, pairs, pools, chance}},
        experts: {k: {accuracy, per_language: {lang: accuracy}}} (each expert alone; K > 1, else null), settings}
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from xlbtm.io import atomic_open, atomic_path, read_json, write_json

RESULT = "result.json"
REPORT = "report.md"
PLOT = "ppl_by_language.png"


def write_outputs(out_dir: str | os.PathLike, result: dict, dense: dict | None = None) -> dict[str, Path]:
    """Write result.json, report.md and the plot; returns their paths."""
    out = Path(out_dir)
    paths = {"result": out / RESULT, "report": out / REPORT, "plot": out / PLOT}
    write_json(paths["result"], result)
    with atomic_open(paths["report"]) as f:
        f.write(render_markdown(result, dense))
    plot_languages(paths["plot"], result, dense)
    return paths


def load_result(path: str | os.PathLike) -> dict:
    """A result.json, or the directory holding one (for `--dense-result`)."""
    p = Path(path)
    return read_json(p / RESULT if p.is_dir() else p)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def metric_name(objective: str) -> str:
    """How perplexities of models of this objective are labelled: `ppl` (causal LM) or `pseudo-ppl` (masked LM:
    each token predicted with part of the document masked). result.json keeps c-BTM's `*ppl` keys either way."""
    return "pseudo-ppl" if objective == "mlm" else "ppl"


def metric_label(result: dict) -> str:
    """What `result_ppl` and every `ppl` of this result measure (`metric_name` of its experts' objective)."""
    return metric_name(result.get("settings", {}).get("objective"))


def render_markdown(result: dict, dense: dict | None = None) -> str:
    s = result.get("settings", {})
    m = metric_label(result)
    md = [
        f"# Ensemble evaluation: {result.get('dataset')}\n",
        _table(
            ["ensemble", "experts", "temperature", "topk", "documents", "tokens", m],
            [
                [
                    result.get("ensemble_type"),
                    s.get("num_experts"),
                    s.get("temperature"),
                    s.get("topk"),
                    result.get("documents"),
                    result.get("tokens"),
                    result.get("result_ppl"),
                ]
            ],
        ),
    ]
    if s.get("excluded_experts"):
        md.append(
            f"\nExcluded experts (switched off, not scored; the mixture is renormalized over the remaining "
            f"{s.get('num_experts')}): {', '.join(map(str, s['excluded_experts']))}\n"
        )
    if dense is not None:
        d, e = dense.get("result_ppl"), result.get("result_ppl")
        md.append(
            f"\nDense baseline: {m} {_fmt(d)}; ensemble {_fmt(e)}"
            + (f" ({100 * (e - d) / d:+.1f}%)\n" if d and e else "\n")
        )
    oracle = result.get("oracle")
    if oracle:
        md.append(
            f"\nOracle (the best single expert per document, an upper bound on document-level routing): "
            f"{m} {_fmt(oracle.get('result_ppl'))}\n"
        )
    sweep = result.get("sweep") or []
    if len(sweep) > 1:
        md.append("\n## Sweep\n\n")
        if any("retrieval" in r for r in sweep):
            md.append(
                _table(
                    ["temperature", "topk", m, "retrieval accuracy@1"],
                    [[r.get("temperature"), r.get("topk"), r.get("result_ppl"), r.get("retrieval")] for r in sweep],
                )
            )
        else:
            md.append(
                _table(
                    ["temperature", "topk", m],
                    [[r.get("temperature"), r.get("topk"), r.get("result_ppl")] for r in sweep],
                )
            )
    langs = result.get("per_language", {})
    if langs:
        md.append("\n## Per language\n\n")
        if dense is not None:
            dl = dense.get("per_language", {})
            rows = []
            for lang, v in sorted(langs.items()):
                dp = dl.get(lang, {}).get("ppl")
                delta = 100 * (v["ppl"] - dp) / dp if dp else None
                rows.append(
                    [lang, v["documents"], v["tokens"], dp, v["ppl"], None if delta is None else f"{delta:+.1f}%"]
                )
            md.append(_table(["lang", "documents", "tokens", f"dense {m}", f"ensemble {m}", "change"], rows))
        else:
            md.append(
                _table(
                    ["lang", "documents", "tokens", m],
                    [[k, v["documents"], v["tokens"], v["ppl"]] for k, v in sorted(langs.items())],
                )
            )
    if result.get("retrieval"):
        md.append(_retrieval_markdown(result, dense))
    clusters = result.get("per_cluster", {})
    if clusters:
        md.append("\n## Per cluster (documents grouped by the clusterer's assignment)\n\n")
        top = result.get("top_expert") or {}
        md.append(
            _table(
                ["cluster", "documents", "tokens", m, "share of tokens where this expert led"],
                [
                    [k, v["documents"], v["tokens"], v["ppl"], top.get(k)]
                    for k, v in sorted(clusters.items(), key=lambda kv: int(kv[0]))
                ],
            )
        )
    return "".join(md)


def _retrieval_markdown(result: dict, dense: dict | None) -> str:
    """The cross-lingual retrieval section: per language accuracy@1, beside the dense baseline's when its
    result.json has one (--dense-result of a dense run with the same --parallel-data)."""
    r = result["retrieval"]
    st = r.get("settings", {})
    md = [
        "\n## Cross-lingual retrieval (accuracy@1)\n\n",
        f"For each translation pair of {st.get('parallel_data')}/{st.get('subset')}: is the target's vector nearest "
        f"(cosine) to its own source among the sources of its pool (pairs of one language split into blocks of "
        f"<= {st.get('pool_size')}; chance = 1 / block size; ties count as misses)? A sentence's vector is the "
        "mean of the final hidden states over its text tokens (`<s> text </s>`, specials excluded), "
        "L2-normalized; an ensemble's is the sum of its experts' unit vectors weighted by the routing weights "
        + (
            "of the pair's target side, for both sides (--retrieval-routing target: the experts of the pool's "
            "language read its sources too)"
            if st.get("routing", "own") == "target"
            else "of that sentence (--retrieval-routing own: each side routed by its own text or language)"
        )
        + ", renormalized.\n\n",
    ]
    dr = (dense or {}).get("retrieval") or None
    if dr is not None:
        md.append(
            f"Overall tgt -> src: dense {_fmt(dr.get('accuracy'))}, {result.get('ensemble_type')} "
            f"{_fmt(r.get('accuracy'))}; src -> tgt: dense {_fmt(dr.get('src2tgt'))}, "
            f"{result.get('ensemble_type')} {_fmt(r.get('src2tgt'))}\n\n"
        )
        other = {
            k: (dr.get("settings", {}).get(k), st.get(k))
            for k in ("parallel_data", "subset", "pool_size", "max_pairs_per_language", "centering")
            if dr.get("settings", {}).get(k) != st.get(k)
        }
        if other:  # another pool, other pairs or raw cosines: accuracies are not comparable
            md.append(
                "**Not comparable**: the dense result's retrieval ran with other settings ("
                + ", ".join(f"{k} {d} vs {e}" for k, (d, e) in other.items())
                + ").\n\n"
            )
        dl = dr.get("per_language", {})
        rows = []
        for lang, v in sorted(r.get("per_language", {}).items()):
            d = dl.get(lang, {}).get("accuracy")
            rows.append(
                [
                    lang,
                    v["pairs"],
                    v["chance"],
                    d,
                    v["accuracy"],
                    None if d is None else f"{100 * (v['accuracy'] - d):+.1f} pts",
                ]
            )
        md.append(_table(["lang", "pairs", "chance", "dense tgt->src", "ensemble tgt->src", "change"], rows))
    else:
        md.append(
            f"Overall: tgt -> src {_fmt(r.get('accuracy'))}, src -> tgt {_fmt(r.get('src2tgt'))} "
            f"({r.get('pairs')} pairs)\n\n"
        )
        md.append(
            _table(
                ["lang", "pairs", "pools", "chance", "tgt->src", "src->tgt"],
                [
                    [k, v["pairs"], v["pools"], v["chance"], v["accuracy"], v["src2tgt"]]
                    for k, v in sorted(r.get("per_language", {}).items())
                ],
            )
        )
    experts = r.get("experts") or {}
    if experts:
        md.append(
            "\nEach expert alone (tgt -> src): "
            + ", ".join(
                f"expert {k} {_fmt(v['accuracy'])}" for k, v in sorted(experts.items(), key=lambda kv: int(kv[0]))
            )
            + "\n"
        )
    return "".join(md)


def plot_languages(path: str | os.PathLike, result: dict, dense: dict | None = None) -> None:
    """Bar chart of per-language perplexity (ensemble, and the dense model beside it when given)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt

    langs = sorted(result.get("per_language", {}))
    ens = [result["per_language"][lang]["ppl"] for lang in langs]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(langs) + 2), 3.5), dpi=100)
    xs = list(range(len(langs)))
    if dense is not None:
        dl = dense.get("per_language", {})
        dv = [dl.get(lang, {}).get("ppl", float("nan")) for lang in langs]
        ax.bar([x - 0.2 for x in xs], dv, width=0.4, label="dense")
        ax.bar([x + 0.2 for x in xs], ens, width=0.4, label=result.get("ensemble_type", "ensemble"))
        ax.legend()
    else:
        ax.bar(xs, ens, width=0.6)
    ax.set_xticks(xs)
    ax.set_xticklabels(langs, rotation=60, fontsize=8)
    m = metric_label(result)
    ax.set_ylabel("pseudo-perplexity" if m == "pseudo-ppl" else "perplexity")
    ax.set_title(f"{result.get('dataset')}: {result.get('ensemble_type')} ({m} {_fmt(result.get('result_ppl'))})")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
