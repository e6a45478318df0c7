"""Extend a clusterer with new languages, one new cluster each, without moving the old ones (X-ELM's HMR).

The extension is a new clusterer (its own fingerprint) whose clusters 0..K-1 are the old ones and K.. the new
languages, in the order given. Its clusterer.json records where it came from:

    "extends": {"fingerprint": <old>, "num_clusters": K, "path": <old dir>, "langs": [new, ...]}
    "lineage": {<fingerprint>: <its num_clusters>, ...}   every ancestor, so experts trained on any of them
                                                          are experts of this clusterer's clusters < their K

Typological: the old languages keep their clusters exactly (routing is by `lang`). TF-IDF: the featurizer is
kept and each new language's centroid is the mean of its documents' features (the k-means centroid of that
set); documents of the old languages go to whichever centroid is now nearest, which for an old language is its
old cluster unless the new language is close to it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xlbtm.cli import get_logger
from xlbtm.errors import InputError, UsageError

log = get_logger("cluster")


def lineage(clusterer) -> dict[str, int]:
    """{fingerprint: num_clusters} of this clusterer and every clusterer it extends."""
    return {**dict(getattr(clusterer, "meta", {}).get("lineage") or {}), clusterer.fingerprint: clusterer.num_clusters}


def known_langs(clusterer) -> dict[str, int]:
    """The languages a clusterer already gives a cluster of their own: all of a typological one's, and the
    languages earlier extensions added to a TF-IDF one."""
    if clusterer.kind == "typological":
        return dict(clusterer.lang_to_cluster)
    return {lang: int(k) for lang, k in (clusterer.meta.get("added_langs") or {}).items()}


def _new_meta(clusterer, langs: Sequence[str]) -> dict:
    meta = {k: v for k, v in clusterer.meta.items() if k not in ("format", "files", "fingerprint")}
    meta["num_clusters"] = clusterer.num_clusters + len(langs)
    meta["extends"] = {
        "fingerprint": clusterer.fingerprint,
        "num_clusters": clusterer.num_clusters,
        "path": str(clusterer.path),
        "langs": list(langs),
    }
    meta["lineage"] = lineage(clusterer)
    return meta


def check_new_langs(clusterer, langs: Sequence[str]) -> list[str]:
    langs = [lang.strip() for lang in langs if lang.strip()]
    if not langs:
        raise UsageError("--langs is empty: give the new languages as comma-separated codes, e.g. --langs pl,cs")
    if len(set(langs)) != len(langs):
        raise UsageError(f"--langs lists a language twice: {','.join(langs)}")
    covered = {lang: k for lang, k in known_langs(clusterer).items() if lang in langs}
    if covered:
        raise UsageError(
            "--langs: "
            + ", ".join(f"'{lang}' is already covered by cluster {k}" for lang, k in covered.items())
            + f" of {clusterer.path}; add only languages it does not know"
        )
    return langs


def extend_typological(clusterer, langs: Sequence[str], output_dir: str | os.PathLike):
    """The typological clusterer with each language of `langs` as a new cluster (URIEL must know it)."""
    from xlbtm.cluster import typology
    from xlbtm.cluster.artifact import load_clusterer
    from xlbtm.formats.clusterer import save_clusterer

    langs = check_new_langs(clusterer, langs)
    feats, codes = typology.language_features(langs)  # UsageError for a language URIEL does not know
    meta = _new_meta(clusterer, langs)
    K = clusterer.num_clusters
    meta["lang_to_cluster"] = {**clusterer.lang_to_cluster, **{lang: K + i for i, lang in enumerate(langs)}}
    params = dict(meta.get("params") or {})
    params["langs"] = list(params.get("langs") or clusterer.lang_to_cluster) + list(langs)
    params["uriel_codes"] = {**(params.get("uriel_codes") or {}), **codes}
    meta["params"] = params
    old = clusterer.features if clusterer.features is not None else np.zeros((0, feats.shape[1]), np.float32)
    save_clusterer(output_dir, meta, {"features": np.concatenate([old, feats.astype(np.float32)])})
    return load_clusterer(output_dir)


def language_documents(
    data_dir, langs: Sequence[str], *, max_docs: int | None = None, skip_bad_lines: bool = False
) -> dict[str, list[str]]:
    """The texts of each language of `langs` below `data_dir` (the train split when there is one), at most
    `max_docs` per language (the first ones in corpus order); a language without documents is an error."""
    from xlbtm.corpus import find_jsonl_files, iter_file

    root = Path(data_dir) / "train" if (Path(data_dir) / "train").is_dir() else Path(data_dir)
    want = set(langs)
    out: dict[str, list[str]] = defaultdict(list)
    for path in find_jsonl_files(root):
        for doc in iter_file(path, skip_bad_lines=skip_bad_lines):
            if doc.lang in want and (max_docs is None or len(out[doc.lang]) < max_docs):
                out[doc.lang].append(doc.text)
    missing = [lang for lang in langs if not out.get(lang)]
    if missing:
        raise InputError(f"no documents with lang {', '.join(missing)} (check the 'lang' fields or --langs)", root)
    return dict(out)


def extend_tfidf(clusterer, texts_by_lang: dict[str, list[str]], output_dir: str | os.PathLike):
    """The TF-IDF clusterer with one new centroid per language: the mean of its documents' features."""
    from xlbtm.cluster.artifact import load_clusterer
    from xlbtm.formats.clusterer import TOKENIZER_DIR, save_clusterer

    langs = check_new_langs(clusterer, list(texts_by_lang))
    new = np.stack([clusterer.transform(texts_by_lang[lang]).mean(0) for lang in langs]).astype(np.float32)
    meta = _new_meta(clusterer, langs)
    K = clusterer.num_clusters
    meta["added_langs"] = {**known_langs(clusterer), **{lang: K + i for i, lang in enumerate(langs)}}
    meta["extends"]["documents"] = {lang: len(texts_by_lang[lang]) for lang in langs}
    arrays = {
        "idf": clusterer.idf,
        "components": clusterer.components,
        "centroids": np.concatenate([clusterer.centroids, new]),
    }
    tok_dir = clusterer.path / TOKENIZER_DIR if clusterer.featurizer_kind == "subword" else None
    save_clusterer(output_dir, meta, arrays, vocab=clusterer.vocab, tokenizer_dir=tok_dir)
    ext = load_clusterer(output_dir)
    for i, lang in enumerate(langs):
        got = np.bincount(ext.predict(texts_by_lang[lang]), minlength=ext.num_clusters)
        log.info(f"{lang}: {got[K + i]} of {got.sum()} of its documents go to its new cluster {K + i}")
        if got[K + i] < got.sum() / 2:
            log.warning(
                f"{lang}: most of its documents route to other clusters: the featurizer (fitted without "
                f"{lang}) knows few of its terms. Its expert still trains on all of them; routing them at "
                "inference needs a typological clusterer (--ensemble-type lang) or a refitted one"
            )
    return ext


def extend_clusterer(
    clusterer,
    langs: Sequence[str],
    output_dir,
    *,
    data_dir=None,
    max_docs: int | None = 2000,
    skip_bad_lines: bool = False,
):
    """`extend_typological` or `extend_tfidf` (whose centroids are fitted on `data_dir`'s documents of `langs`)."""
    from xlbtm.io import refuse_overlap

    refuse_overlap(
        {"--output-clusterer": output_dir}, {"--path-to-clusterer": clusterer.path, "--path-to-data": data_dir}
    )
    if clusterer.kind == "typological":
        return extend_typological(clusterer, langs, output_dir)
    langs = check_new_langs(clusterer, langs)
    if data_dir is None:
        raise UsageError("extending a TF-IDF clusterer fits the new centroids on documents: give --path-to-data")
    return extend_tfidf(
        clusterer, language_documents(data_dir, langs, max_docs=max_docs, skip_bad_lines=skip_bad_lines), output_dir
    )
