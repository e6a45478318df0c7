"""Ensemble results on disk: result.json (machine-readable), report.md (tables), ppl_by_language.png.

result.json keys (stable; c-BTM readers look for `result_ppl`):
    dataset, ensemble_type, result_ppl, tokens, documents,
    per_language: {lang: {ppl, tokens, documents}},
    per_cluster: {k: {ppl, tokens, documents, languages: {lang: documents}, most documents first}},
    top_expert: {k: fraction of scored tokens where expert k carried the most weight},
    oracle: {result_ppl, per_language} of the best single expert per document (K > 1; else null),
    settings: {temperature, topk, cbtm_compat, num_experts, excluded_experts (cluster ids switched off), ...,
        dense_result (--dense-result, or null),
        budget: {models: [{cluster, steps, planned_steps, tokens, source}], steps, tokens} (what the scored
            models trained, `xlbtm.ensemble.experts.training_budget`; steps / tokens are sums over the models,
            null when one is unknown; budget is null when no model carries a training record)},
    sweep: [{temperature, topk, result_ppl, per_language[, retrieval]}],
    retrieval (only with --parallel-data; xlbtm.ensemble.retrieval): {accuracy (tgt -> src accuracy@1, share of
        all pairs), src2tgt, pairs, per_language: {lang: {accuracy, src2tgt, pairs, pools, chance}},
        experts: {k: {accuracy, per_language: {lang: accuracy}}} (each expert alone; K > 1, else null), settings}

Ties: a language is tied with the dense model when the % change of its perplexity rounds to 0.0% at the 0.1%
the report shows (`change_pct`); a tie is neither a win nor a loss, in report.md, the plot's title and the
study's "better in W/L languages" alike (`compare_ppl`).

Reruns into one job dir (eval_ensemble caches the scores there, so another --temperature / --topk /
--ensemble-type costs only the mixing): result.json / report.md / ppl_by_language.png are always the latest
run's -- what the command just computed is where every reader (the scaling study, c-BTM scripts) looks. Before
they are replaced by a run of other settings, the earlier run's three files are moved aside to
result.<tag>.json / report.<tag>.md / ppl_by_language.<tag>.png, `<tag>` named after their settings
(`settings_tag`: the ensemble type, temperatures, top-k, excluded experts and a hash of every other setting),
so no earlier report is lost; report.md lists them. A rerun with identical settings replaces its own files
(and a copy of them moved aside earlier).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.errors import InputError
from xlbtm.io import atomic_open, atomic_path, read_json, sha256_json, write_json

log = get_logger("ensemble")

RESULT = "result.json"
REPORT = "report.md"
PLOT = "ppl_by_language.png"
# how many of a cluster's languages report.md names (the rest are summed up as "+N more")
TOP_LANGUAGES = 3


def output_paths(out_dir: str | os.PathLike, tag: str | None = None) -> dict[str, Path]:
    """The result / report / plot paths in `out_dir`: the latest run's, or (`tag`) an earlier run's kept aside."""
    out = Path(out_dir)
    if tag is None:
        return {"result": out / RESULT, "report": out / REPORT, "plot": out / PLOT}
    return {
        "result": out / f"result.{tag}.json",
        "report": out / f"report.{tag}.md",
        "plot": out / f"ppl_by_language.{tag}.png",
    }


def settings_tag(result: dict) -> str:
    """A file-name part that names a result's settings: readable where it matters (ensemble type, the sweep's
    temperatures and top-k, excluded experts) plus a short hash of everything else that defines the numbers
    (experts, data, clusterer, window, --dense-result ...). The training budget is left out: it describes
    the experts, which their paths already name. Settings a result does not record (null, or an older
    result.json without the key) hash alike, so an older run's files keep their name when rerun."""
    s = result.get("settings") or {}
    sweep = result.get("sweep") or []
    parts = [str(result.get("ensemble_type"))]
    temps, topks = _sweep_axes(result)
    if temps:
        parts += ["T" + temps, "topk" + topks]
    if s.get("excluded_experts"):
        parts.append("excl" + "+".join(map(str, s["excluded_experts"])))
    ident = {
        "dataset": result.get("dataset"),
        "ensemble_type": result.get("ensemble_type"),
        "sweep": [(r.get("temperature"), r.get("topk")) for r in sweep],
        "settings": {k: v for k, v in s.items() if k != "budget" and v is not None},
    }
    parts.append(sha256_json(ident)[:6])
    return "_".join(parts)


def _sweep_axes(result: dict) -> tuple[str, str]:
    """The temperatures and top-k values a result swept, `+`-joined ('' without temperatures: not clustering)."""
    sweep = result.get("sweep") or []
    temps = list(dict.fromkeys(r["temperature"] for r in sweep if r.get("temperature") is not None))
    if not temps:
        return "", ""
    return "+".join(f"{t:g}" for t in temps), "+".join(str(k) for k in dict.fromkeys(r.get("topk") for r in sweep))


def write_outputs(out_dir: str | os.PathLike, result: dict, dense: dict | None = None) -> dict[str, Path]:
    """Write result.json, report.md and the plot; returns their paths. An earlier run's files of other
    settings are moved aside first (module docstring), never overwritten."""
    out = Path(out_dir)
    paths = output_paths(out)
    tag = settings_tag(result)
    _move_aside_earlier(out, tag)
    # a copy of this very run's settings kept aside earlier is superseded by what is written now
    for p in output_paths(out, tag).values():
        p.unlink(missing_ok=True)
    earlier = _earlier_results(out)
    write_json(paths["result"], result)
    with atomic_open(paths["report"]) as f:
        f.write(render_markdown(result, dense, earlier=earlier))
    plot_languages(paths["plot"], result, dense)
    return paths


def _move_aside_earlier(out: Path, tag: str) -> None:
    """Rename the latest run's files to their settings tag when that run had other settings than `tag`'s."""
    latest = output_paths(out)
    if not latest["result"].is_file():
        return
    previous = _read_result(latest["result"])
    if previous is None:  # not a result this module wrote (torn, foreign): nothing to name it by; replaced
        return
    old_tag = settings_tag(previous)
    if old_tag == tag:
        return
    for kind, dst in output_paths(out, old_tag).items():
        if latest[kind].is_file():
            os.replace(latest[kind], dst)
    log.info(
        f"the earlier run in {out} had other settings: its report is kept as {output_paths(out, old_tag)['report']}"
    )


def _earlier_results(out: Path) -> list[tuple[str, dict]]:
    """(report file name, result) of each earlier run kept aside in `out`, oldest first."""
    found = []
    for p in out.glob("result.*.json"):
        tag = p.name[len("result.") : -len(".json")]
        r = _read_result(p)
        if r is not None:  # (an unreadable one is not listed; the file stays where it is)
            found.append((p.stat().st_mtime_ns, output_paths(out, tag)["report"].name, r))
    return [(name, r) for _, name, r in sorted(found, key=lambda x: (x[0], x[1]))]


def _read_result(path: Path) -> dict | None:
    """A result.json's dict, or None for a file that is not one (torn, foreign, another shape)."""
    try:
        r = read_json(path)
    except (OSError, InputError):
        return None
    if not isinstance(r, dict) or not isinstance(r.get("settings") or {}, dict):
        return None
    sweep = r.get("sweep") or []
    return r if isinstance(sweep, list) and all(isinstance(x, dict) for x in sweep) else None


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


def fmt_tokens(n: int | None) -> str:
    """A token count as a reader scans it: 81.9k, 1.23M."""
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def change_pct(x: float | None, ref: float | None) -> float | None:
    """The % change of `x` vs `ref`, at the precision reports show (0.1%): what a tie is decided on."""
    if x is None or not ref or (isinstance(x, float) and math.isnan(x)) or math.isnan(ref):
        return None
    return round(100 * (x - ref) / ref, 1) + 0.0  # (+ 0.0: -0.0 prints as 0.0)


def fmt_change(x: float | None, ref: float | None) -> str | None:
    c = change_pct(x, ref)
    return None if c is None else "0.0%" if c == 0 else f"{c:+.1f}%"


def compare_ppl(x: float | None, ref: float | None) -> str | None:
    """`better` / `tied` / `worse` of a perplexity `x` vs the dense `ref` (lower is better); a tie is a change
    that rounds to 0.0% (`change_pct`). None when either is missing."""
    c = change_pct(x, ref)
    return None if c is None else "better" if c < 0 else "worse" if c > 0 else "tied"


def language_outcomes(result: dict, dense: dict) -> dict[str, list[str]]:
    """{better, tied, worse: [lang]} of the result's per-language perplexities vs the dense result's."""
    dl = dense.get("per_language", {})
    out: dict[str, list[str]] = {"better": [], "tied": [], "worse": []}
    for lang, v in sorted(result.get("per_language", {}).items()):
        o = compare_ppl(v.get("ppl"), dl.get(lang, {}).get("ppl"))
        if o is not None:
            out[o].append(lang)
    return out


def outcome_line(outcomes: dict[str, list[str]]) -> str:
    n = sum(len(v) for v in outcomes.values())
    return (
        f"better in {len(outcomes['better'])}, tied in {len(outcomes['tied'])}, worse in "
        f"{len(outcomes['worse'])} of {n} languages"
    )


def side_budget(models: list[dict | None]) -> dict | None:
    """settings.budget of one result from each scored model's `training_budget` (None: nothing recorded)."""
    if all(m is None for m in models):
        return None

    def total(key: str) -> int | None:
        vals = [None if m is None else m.get(key) for m in models]
        return None if any(v is None for v in vals) else sum(int(v) for v in vals if v is not None)

    return {"models": models, "steps": total("steps"), "tokens": total("tokens")}


def _budget_line(name: str, budget: dict | None, why_missing: str) -> str:
    if not budget:
        return f"- {name}: not recorded ({why_missing})\n"
    models = budget.get("models") or []
    steps, tokens = budget.get("steps"), budget.get("tokens")
    planned = [m.get("planned_steps") for m in models if m]
    done = [m.get("steps") for m in models if m]
    if len(models) == 1:
        line = f"- {name}: {_fmt(steps)} steps, {fmt_tokens(tokens)} training tokens"
    else:
        each = ", ".join(_fmt(m.get("steps")) if m else "-" for m in models)
        line = (
            f"- {name}: {len(models)} experts, {_fmt(steps)} steps in all ({each} per expert), "
            f"{fmt_tokens(tokens)} training tokens"
        )
        if tokens is not None:
            line += " (" + ", ".join(fmt_tokens(m.get("tokens")) for m in models) + ")"
    if any(p is not None and d is not None and d < p for p, d in zip(planned, done)):
        line += f"; planned {sum(p for p in planned if p is not None)} steps (a run stopped early)"
    return line + "\n"


def _languages(langs: dict[str, int] | None) -> str | None:
    """A cluster's main languages: `de 40, fr 38, it 2, +3 more languages (5)`, most documents first."""
    if not langs:
        return None
    items = sorted(langs.items(), key=lambda lc: (-lc[1], lc[0]))
    shown = ", ".join(f"{lang} {n}" for lang, n in items[:TOP_LANGUAGES])
    rest = items[TOP_LANGUAGES:]
    return shown + (f", +{len(rest)} more languages ({sum(n for _, n in rest)})" if rest else "")


def metric_name(objective: str) -> str:
    """How perplexities of models of this objective are labelled: `ppl` (causal LM) or `pseudo-ppl` (masked LM:
    each token predicted with part of the document masked). result.json keeps c-BTM's `*ppl` keys either way."""
    return "pseudo-ppl" if objective == "mlm" else "ppl"


def metric_label(result: dict) -> str:
    """What `result_ppl` and every `ppl` of this result measure (`metric_name` of its experts' objective)."""
    return metric_name(result.get("settings", {}).get("objective"))


def render_markdown(result: dict, dense: dict | None = None, earlier: list[tuple[str, dict]] | None = None) -> str:
    """report.md: the headline numbers, both sides' training budgets, per language (dense, ensemble, oracle and
    the % changes), per cluster (its main languages), the sweep, retrieval. `earlier`: (file name, result) of
    the reports of other settings kept in the same directory (`write_outputs`), listed at the end."""
    s = result.get("settings", {})
    m = metric_label(result)
    e = result.get("result_ppl")
    d = None if dense is None else dense.get("result_ppl")
    md = [
        f"# Ensemble evaluation: {result.get('dataset')}\n\n",
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
                    e,
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
        change = fmt_change(e, d)
        md.append(f"\nDense baseline: {m} {_fmt(d)}; ensemble {_fmt(e)}" + (f" ({change})\n" if change else "\n"))
    oracle = result.get("oracle")
    if oracle:
        change = fmt_change(oracle.get("result_ppl"), d) if dense is not None else None
        md.append(
            f"\nOracle (the best single expert per document, an upper bound on document-level routing): "
            f"{m} {_fmt(oracle.get('result_ppl'))}" + (f" ({change} vs dense)\n" if change else "\n")
        )
    if dense is not None and result.get("per_language"):
        md.append(
            f"\n**Per language, the ensemble is {outcome_line(language_outcomes(result, dense))}** "
            "(tied: the change vs dense rounds to 0.0% at the 0.1% shown; a tie is neither a win nor a loss).\n"
        )
    md.append("\n## Training budget\n\n")
    md.append(_budget_line("ensemble" if s.get("num_experts", 1) > 1 else "this model", s.get("budget"), _NO_BUDGET))
    if dense is not None:
        md.append(_budget_line("dense", (dense.get("settings") or {}).get("budget"), _NO_DENSE_BUDGET))
    if s.get("budget") or (dense or {}).get("settings", {}).get("budget"):
        md.append(
            "\n(steps and sample positions from each model's latest checkpoint, else its train_log.jsonl; "
            "tokens: the corpus tokens its training samples consumed)\n"
        )
    langs = result.get("per_language", {})
    if langs:
        md.append("\n## Per language\n\n")
        ol = (oracle or {}).get("per_language") or {}
        if dense is not None:
            dl = dense.get("per_language", {})
            rows = []
            for lang, v in sorted(langs.items()):
                dp = dl.get(lang, {}).get("ppl")
                op = ol.get(lang, {}).get("ppl")
                row = [lang, v["documents"], v["tokens"], dp, v["ppl"], fmt_change(v["ppl"], dp)]
                rows.append(row + ([op, fmt_change(op, dp)] if ol else []))
            header = ["lang", "documents", "tokens", f"dense {m}", f"ensemble {m}", "change"]
            md.append(_table(header + ([f"oracle {m}", "oracle change"] if ol else []), rows))
        else:
            md.append(
                _table(
                    ["lang", "documents", "tokens", m] + ([f"oracle {m}"] if ol else []),
                    [
                        [k, v["documents"], v["tokens"], v["ppl"]] + ([ol.get(k, {}).get("ppl")] if ol else [])
                        for k, v in sorted(langs.items())
                    ],
                )
            )
    clusters = result.get("per_cluster", {})
    if clusters:
        md.append("\n## Per cluster (documents grouped by the clusterer's assignment)\n\n")
        top = result.get("top_expert") or {}
        md.append(
            _table(
                ["cluster", "languages (documents)", "documents", "tokens", m, "share of tokens where this expert led"],
                [
                    [k, _languages(v.get("languages")), v["documents"], v["tokens"], v["ppl"], top.get(k)]
                    for k, v in sorted(clusters.items(), key=lambda kv: int(kv[0]))
                ],
            )
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
    if result.get("retrieval"):
        md.append(_retrieval_markdown(result, dense))
    if earlier:
        md.append("\n## Earlier runs in this directory (other settings, reports kept beside this one)\n\n")
        md.append(
            _table(
                ["report", "ensemble", "temperature", "topk", "excluded", m],
                [
                    [
                        f"`{name}`",
                        r.get("ensemble_type"),
                        *(_sweep_axes(r)[i] or None for i in (0, 1)),
                        ",".join(map(str, (r.get("settings") or {}).get("excluded_experts") or [])) or None,
                        r.get("result_ppl"),
                    ]
                    for name, r in earlier
                ],
            )
        )
    return "".join(md)


_NO_BUDGET = "no checkpoint train_state.json, train_log.jsonl or configured steps found for the models"
_NO_DENSE_BUDGET = "its result.json predates budget records; rerun eval_ensemble for the dense model to add it"


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
    """ppl_by_language.png: `language_figure`, saved."""
    import matplotlib.pyplot as plt  # (slow to import: only when a plot is drawn)

    fig = language_figure(result, dense)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def language_figure(result: dict, dense: dict | None = None):
    """The per-language picture (a matplotlib Figure; the caller closes it). With a dense result: per language
    the % change in perplexity vs dense of the ensemble and of the oracle (bars; dense is the zero line), the
    overall numbers and the better / tied / worse count in the title. Without one: perplexity per language
    (ensemble, and oracle when K > 1) on a log axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    m = metric_label(result)
    what = "pseudo-perplexity" if m == "pseudo-ppl" else "perplexity"
    name = f"{result.get('ensemble_type', 'ensemble')} ensemble"
    langs = sorted(result.get("per_language", {}))
    ens = [result["per_language"][lang]["ppl"] for lang in langs]
    oracle = result.get("oracle") or {}
    ol = oracle.get("per_language") or {}
    orc = [ol.get(lang, {}).get("ppl", float("nan")) for lang in langs]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(langs) + 2.5), 4.5), dpi=100)
    xs = list(range(len(langs)))
    width = 0.4 if ol else 0.6
    shift = width / 2 if ol else 0.0
    e = result.get("result_ppl")
    if dense is not None:
        dl = dense.get("per_language", {})
        d = dense.get("result_ppl")

        def rel(vals):  # unrounded, for the bars' height
            out = []
            for lang, v in zip(langs, vals):
                dp = dl.get(lang, {}).get("ppl")
                out.append(float("nan") if not dp or v is None else 100 * (v - dp) / dp)
            return out

        bars = ax.bar([x - shift for x in xs], rel(ens), width=width, label=name, color="tab:blue")
        ax.bar_label(
            bars, labels=[fmt_change(v, dl.get(lg, {}).get("ppl")) or "" for lg, v in zip(langs, ens)], fontsize=6
        )
        if ol:
            ax.bar(
                [x + shift for x in xs],
                rel(orc),
                width=width,
                label="oracle (best expert per document)",
                color="tab:green",
                alpha=0.7,
            )
        ax.axhline(0, color="black", lw=0.8, label=f"dense ({m} {_fmt(d)} overall)")
        ax.set_ylabel(f"% change in {m} vs dense (lower is better)")
        title = f"{result.get('dataset')}: {name} {m} {_fmt(e)} vs dense {_fmt(d)} ({fmt_change(e, d) or '-'})"
        if oracle.get("result_ppl") is not None:
            title += f", oracle {_fmt(oracle['result_ppl'])}"
        title += "\nensemble " + outcome_line(language_outcomes(result, dense))
    else:
        ax.bar([x - shift for x in xs], ens, width=width, label=name, color="tab:blue")
        if ol:
            ax.bar(
                [x + shift for x in xs],
                orc,
                width=width,
                label="oracle (best expert per document)",
                color="tab:green",
                alpha=0.7,
            )
        ax.set_yscale("log")  # languages differ by orders of magnitude in perplexity
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 x 10^1
        ax.yaxis.set_major_formatter(plain)
        lo, hi = ax.get_ylim()
        if hi < 10 * lo:  # within one decade the major ticks are few: label the minor ones too
            ax.yaxis.set_minor_formatter(plain)
        ax.set_ylabel(f"{what} (log scale, lower is better)")
        title = f"{result.get('dataset')}: {name} {m} {_fmt(e)}"
        if oracle.get("result_ppl") is not None:
            title += f", oracle {_fmt(oracle['result_ppl'])}"
    ax.set_title(title, fontsize=9)
    ax.set_xticks(xs)
    ax.set_xticklabels(langs, rotation=0 if len(langs) <= 12 else 60, fontsize=8)
    ax.set_xlabel("language")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
