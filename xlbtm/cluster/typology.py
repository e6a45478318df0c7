"""Typological clusters: group languages by URIEL syntax features (X-ELM's typological clustering).

Features: URIEL `syntax_average` (103 `S_*` features), read straight from the data files inside the
installed `lang2vec` wheel (`lang2vec/data/feature_averages.npz`, `letter_codes.json`). We do not import
`lang2vec` itself: it imports `pkg_resources`, which setuptools >= 81 no longer ships. Missing values
(-1 in URIEL) become NaN. ISO 639-1 codes are mapped to the ISO 639-3 codes URIEL uses with lang2vec's own
`letter_codes.json` (plus a few macro-language fallbacks); 3-letter codes are used as given.

Modes
- `xelm` (X-ELM paper): start with one cluster per language; in each round compute single-linkage cosine
  distances between clusters (closest member pair), then pair clusters greedily, globally closest pair
  first, until every cluster is paired, halving the count; repeat until K clusters remain
  (K = len(langs) / 2^m). Cosine with missing values: the dot product skips features missing in either
  vector, while each vector's norm counts its own non-missing values. Ties break by language order.
- `balanced` (default): any K <= len(langs). Minimizes
        J = sum_k (W_k / W_mean - 1)^2  +  ALPHA * (1/K) sum_k mean_{l < l' in k} d(l, l')
  where W_k is the token (or character, or language) count of group k, W_mean = total / K, and d is the
  cosine distance above (0 for singleton groups): squared relative load imbalance plus the average
  within-group typological distance. Greedy start (heaviest language first, to the group where J grows
  least), then local search with single moves and pairwise swaps until no move lowers J. Deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np

from xlbtm.errors import UsageError

FEATURE_SET = "syntax_average"
ALPHA = 1.0
XELM_PROCEDURE = (
    "one cluster per language; rounds of greedy global-closest pairing by single-linkage cosine "
    "distance (missing values skipped in the dot product, own norms) until K remain"
)
BALANCED_OBJECTIVE = (
    "minimize sum_k (W_k/W_mean - 1)^2 + 1.0 * mean_k(mean within-group pairwise cosine "
    "distance); W = tokens (chars without a tokenizer, languages without --data-dir)"
)
# ISO 639-1 codes whose letter_codes.json target is missing from URIEL: fall back to a member language
FALLBACKS = {
    "msa": "zsm",
    "fas": "pes",
    "ara": "arb",
    "zho": "cmn",
    "nor": "nob",
    "sqi": "als",
    "est": "ekk",
    "lav": "lvs",
    "swa": "swh",
    "uzb": "uzn",
    "aze": "azj",
    "mon": "khk",
    "kur": "kmr",
    "que": "quz",
    "orm": "gaz",
    "nep": "npi",
    "ori": "ory",
    "pus": "pbu",
    "hbs": "srp",
    "grn": "gug",
}


def _data_dir() -> Path:
    """lang2vec's data dir, found through the installed distribution's file list (not `find_spec`: the wheel
    also installs a `bin/lang2vec.py` script that shadows the package when `bin/` is on sys.path)."""
    import importlib.metadata as md

    try:
        dist = md.distribution("lang2vec")
    except md.PackageNotFoundError:
        raise UsageError(
            "the 'lang2vec' package is not installed (pip install lang2vec); typological "
            "clustering reads its URIEL data files"
        ) from None
    for f in dist.files or []:
        if f.name == "feature_averages.npz" and f.parts[0] == "lang2vec":
            return Path(dist.locate_file(f)).parent  # type: ignore[arg-type]  # typeshed: locate_file -> SimplePath (a Path at runtime)
    raise UsageError("the installed lang2vec has no data/feature_averages.npz; reinstall lang2vec")


@lru_cache(maxsize=1)
def _uriel():
    d = _data_dir()
    db = np.load(d / "feature_averages.npz", allow_pickle=False)
    feats = [str(f) for f in db["feats"]]
    sel = [i for i, f in enumerate(feats) if f.startswith("S_")]
    src = [str(s) for s in db["sources"]].index("avg")
    data = db["data"][:, sel, src].astype(np.float64)
    data[data < 0] = np.nan
    langs = {str(code): i for i, code in enumerate(db["langs"])}
    letter_codes = json.loads((d / "letter_codes.json").read_text())
    return data, langs, [feats[i] for i in sel], letter_codes


def uriel_code(lang: str) -> str:
    """ISO 639-1 (or 639-3) -> the URIEL code that has syntax features; UsageError if none."""
    _, langs, _, letter = _uriel()
    code = lang.lower().strip()
    code = letter.get(code, code)
    if code not in langs or np.isnan(_uriel()[0][langs[code]]).all():
        alt = FALLBACKS.get(code)
        if alt is not None and alt in langs and not np.isnan(_uriel()[0][langs[alt]]).all():
            return alt
        raise UsageError(
            f"--langs: '{lang}' has no URIEL {FEATURE_SET} features (unknown code? use ISO 639-1 "
            f"like 'en' or ISO 639-3 like 'eng')"
        )
    return code


def language_features(langs: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """[L, 103] syntax_average features (NaN = missing) and the lang -> URIEL code map used."""
    data, index, _, _ = _uriel()
    codes = {lang: uriel_code(lang) for lang in langs}
    return np.stack([data[index[codes[lang]]] for lang in langs]), codes


def cosine_distances(feats: np.ndarray) -> np.ndarray:
    """[L, L] 1 - cosine, skipping features missing in either vector in the dot product, while each vector's
    norm is over its own non-missing values (X-ELM's convention)."""
    f = np.nan_to_num(feats, nan=0.0)  # a missing value contributes 0 to both dot product and own norm
    norms = np.sqrt((f * f).sum(1))
    norms[norms == 0] = 1.0
    return 1.0 - (f @ f.T) / np.outer(norms, norms)


# --------------------------------------------------------------------------------------------------- xelm


def xelm_groups(feats: np.ndarray, k: int) -> np.ndarray:
    """X-ELM's hierarchical pairing; returns the group id of every language (groups numbered by their first
    language)."""
    n = feats.shape[0]
    if k < 1 or k > n:
        raise UsageError(f"--num-clusters must be between 1 and the number of languages ({n}), got {k}")
    m = n // k
    if n % k or m & (m - 1):
        raise UsageError(
            f"--typology-mode xelm halves the number of groups each round, so --num-clusters must "
            f"be len(langs) / 2^m; {n} languages allow {_halvings(n)}, got {k}"
        )
    d = cosine_distances(feats)
    clusters = [[i] for i in range(n)]
    while len(clusters) > k:
        c = len(clusters)
        link = np.full((c, c), np.inf)
        for a in range(c):
            for b in range(a + 1, c):
                link[a, b] = d[np.ix_(clusters[a], clusters[b])].min()
        pairs = sorted((link[a, b], a, b) for a in range(c) for b in range(a + 1, c))
        used: set[int] = set()
        merged = []
        for _, a, b in pairs:
            if a in used or b in used:
                continue
            used.update((a, b))
            merged.append(sorted(clusters[a] + clusters[b]))
        clusters = sorted(merged)
    return _labels(clusters, n)


def _halvings(n: int) -> str:
    out = [n]
    while out[-1] % 2 == 0:
        out.append(out[-1] // 2)
    return ", ".join(map(str, out))


_Index = TypeVar("_Index", int, np.integer)  # a language's row: python or numpy int


def _labels(groups: Sequence[Sequence[_Index]], n: int) -> np.ndarray:
    lab = np.empty(n, dtype=np.int64)
    for g, members in enumerate(sorted(groups, key=min)):
        lab[members] = g
    return lab


# ----------------------------------------------------------------------------------------------- balanced


def balanced_objective(lab: np.ndarray, d: np.ndarray, w: np.ndarray, k: int, alpha: float = ALPHA) -> float:
    loads = np.bincount(lab, weights=w, minlength=k)
    mean = w.sum() / k
    imbalance = float((((loads / mean) - 1.0) ** 2).sum())
    spread = 0.0
    for g in range(k):
        mem = np.nonzero(lab == g)[0]
        if mem.size > 1:
            sub = d[np.ix_(mem, mem)]
            spread += sub[np.triu_indices(mem.size, 1)].mean()
    return imbalance + alpha * spread / k


def balanced_groups(
    feats: np.ndarray, k: int, weights: np.ndarray | None = None, alpha: float = ALPHA, max_rounds: int = 100
) -> np.ndarray:
    n = feats.shape[0]
    if k < 1 or k > n:
        raise UsageError(f"--num-clusters must be between 1 and the number of languages ({n}), got {k}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    d = cosine_distances(feats)
    # greedy: heaviest language first; the first k languages seed the k groups
    order = np.argsort(-w, kind="stable")
    lab = np.full(n, -1, dtype=np.int64)
    for g, i in enumerate(order[:k]):
        lab[i] = g
    for i in order[k:]:
        best = None
        for g in range(k):
            lab[i] = g
            part = lab >= 0
            # objective over the languages placed so far (unplaced ones get their own dummy group -1)
            j = balanced_objective(lab[part], d[np.ix_(part, part)], w[part], k, alpha)
            if best is None or j < best[0] - 1e-12:
                best = (j, g)
        assert best is not None  # k >= 1 (checked above), so the loop ran
        lab[i] = best[1]
    cur = balanced_objective(lab, d, w, k, alpha)
    for _ in range(max_rounds):
        improved = False
        for i in range(n):  # single moves (never empty a group)
            for g in range(k):
                if g == lab[i] or (lab == lab[i]).sum() == 1:
                    continue
                old = lab[i]
                lab[i] = g
                j = balanced_objective(lab, d, w, k, alpha)
                if j < cur - 1e-12:
                    cur, improved = j, True
                else:
                    lab[i] = old
        for i in range(n):  # pairwise swaps
            for i2 in range(i + 1, n):
                if lab[i] == lab[i2]:
                    continue
                lab[i], lab[i2] = lab[i2], lab[i]
                j = balanced_objective(lab, d, w, k, alpha)
                if j < cur - 1e-12:
                    cur, improved = j, True
                else:
                    lab[i], lab[i2] = lab[i2], lab[i]
        if not improved:
            break
    groups = [list(np.nonzero(lab == g)[0]) for g in range(k)]
    return _labels(groups, n)
