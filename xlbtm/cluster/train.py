"""Fit clusterers: document sampling, TF-IDF + (balanced) k-means, typological groups, and `--eval`."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlbtm.cli import get_logger
from xlbtm.cluster.artifact import describe, load_clusterer
from xlbtm.cluster.config import ClustererConfig
from xlbtm.errors import InputError, UsageError
from xlbtm.io import check_replaceable, output_owner, refuse_overlap, write_json, write_output_record

log = get_logger("cluster")


@dataclass
class Sample:
    texts: list[str]
    langs: list[str | None]
    total_docs: int  # lines in all files (the population the sample was drawn from)


def _count_lines(path: Path) -> int:
    from xlbtm.corpus.reader import open_binary

    n = 0
    last = b"\n"
    with open_binary(path) as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def sample_documents(
    data_dir: str | os.PathLike,
    max_docs: int | None,
    seed: int = 0,
    *,
    skip_bad_lines: bool = False,
    parallel_side: str | None = None,
) -> Sample:
    """At most `max_docs` documents drawn uniformly across every `*.jsonl[.gz]` below `data_dir` (a corpus root,
    a split or a shard dir). Two streaming passes: count lines (no JSON parsing), then parse only the chosen
    lines. Memory: the chosen texts only. `parallel_side`: the corpus is parallel data, read as that side
    (`xlbtm.corpus.reader.pair_as_document`)."""
    from xlbtm.corpus import ReadStats, find_jsonl_files, iter_file

    files = find_jsonl_files(data_dir)
    if not files:
        raise InputError("no *.jsonl or *.jsonl.gz files below --data-dir", data_dir)
    counts = [_count_lines(p) for p in files]
    total = sum(counts)
    rng = np.random.default_rng(seed)
    if max_docs is None or max_docs >= total:
        chosen = None
    else:
        picks = np.sort(rng.choice(total, size=max_docs, replace=False))
        bounds = np.cumsum([0] + counts)
        chosen = [
            set((picks[(picks >= bounds[i]) & (picks < bounds[i + 1])] - bounds[i]).tolist()) for i in range(len(files))
        ]
    texts, langs = [], []
    stats = ReadStats()
    for i, p in enumerate(files):
        if chosen is not None and not chosen[i]:
            continue
        if chosen is None:
            docs = iter_file(p, p.as_posix(), skip_bad_lines=skip_bad_lines, stats=stats, parallel_side=parallel_side)
        else:
            docs = _chosen_lines(p, chosen[i], skip_bad_lines, stats, parallel_side)  # parse only the chosen lines
        for doc in docs:
            texts.append(doc.text)
            langs.append(doc.lang)
    if stats.skipped:
        log.warning(f"skipped {stats.skipped} bad lines (first: {stats.examples[0]})")
    log.info(f"sampled {len(texts)} of {total} documents from {len(files)} files")
    return Sample(texts, langs, total)


def _chosen_lines(
    path: Path, want: set[int], skip_bad_lines: bool, stats, parallel_side: str | None = None
) -> Iterator:
    """The documents on the chosen 0-based lines of one file, read by the corpus reader, so BOMs, CRLF,
    blank lines (never documents), over-long lines and sp_ids are exactly what every other stage sees."""
    from xlbtm.corpus import iter_file

    return iter_file(
        path, path.as_posix(), skip_bad_lines=skip_bad_lines, stats=stats, lines=want, parallel_side=parallel_side
    )


# ----------------------------------------------------------------------------------------------------- tfidf


def train_tfidf_clusterer(
    data_dir,
    num_clusters: int,
    output_dir,
    *,
    balanced: bool = False,
    featurizer: str = "subword",
    tokenizer: str | os.PathLike | None = None,
    max_docs: int | None = None,
    seed: int = 0,
    skip_bad_lines: bool = False,
    parallel_side: str | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    device=None,
    sample: Sample | None = None,
):
    """Fit featurizer + k-means on a sample and save the artifact; returns (clusterer, sample)."""
    from xlbtm.io import refuse_overlap

    refuse_overlap({"--output-dir": output_dir}, {"--data-dir": data_dir, "--tokenizer": tokenizer})
    from xlbtm.cluster.featurize import SVD_DIM, SubwordFeaturizer, WordFeaturizer
    from xlbtm.cluster.kmeans import fit_kmeans
    from xlbtm.formats.clusterer import save_clusterer

    if num_clusters < 1:
        raise UsageError(f"--num-clusters must be >= 1, got {num_clusters}")
    if featurizer not in ("word", "subword"):
        raise UsageError(f"--featurizer must be word or subword, got {featurizer!r}")
    tok = None
    if featurizer == "subword":
        if tokenizer is None:
            raise UsageError(
                "--featurizer subword needs --tokenizer PATH (the seed model's tokenizer dir); or use --featurizer word"
            )
        from xlbtm.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
    elif tokenizer is not None:
        raise UsageError("--tokenizer is only used with --featurizer subword")
    if max_docs is not None and max_docs < num_clusters:
        raise UsageError(f"--max-docs ({max_docs}) must be >= --num-clusters ({num_clusters})")
    if sample is None:
        sample = sample_documents(data_dir, max_docs, seed, skip_bad_lines=skip_bad_lines, parallel_side=parallel_side)
    if len(sample.texts) < num_clusters:
        raise UsageError(
            f"only {len(sample.texts)} documents under --data-dir, fewer than --num-clusters ({num_clusters})"
        )
    t0 = time.time()
    feat = WordFeaturizer() if featurizer == "word" else SubwordFeaturizer(tok)
    feat.fit(sample.texts, sample.langs, seed=seed)
    assert feat.lsa is not None  # fit() sets it
    x = feat.transform(sample.texts)
    t1 = time.time()
    km = fit_kmeans(x, num_clusters, balanced=balanced, max_iter=max_iter, tol=tol, seed=seed, device=device)
    t2 = time.time()
    log.info(
        f"featurized {len(sample.texts)} docs in {t1 - t0:.1f}s; k-means ({'balanced' if balanced else 'plain'}"
        f") {km.n_iter} iterations in {t2 - t1:.1f}s, inertia {km.inertia:.2f}"
    )
    meta = {
        "kind": "tfidf",
        "num_clusters": num_clusters,
        "featurizer": featurizer,
        "balanced": balanced,
        "params": {
            "svd_dim": feat.lsa.dim,
            "requested_svd_dim": SVD_DIM,
            "seed": seed,
            "max_docs": max_docs,
            "max_iter": max_iter,
            "tol": tol,
            "tf": "raw counts",
            "idf": "smooth (sklearn)",
            **({"parallel_side": parallel_side} if parallel_side else {}),
            **(
                {
                    "min_df": feat.min_df,
                    "max_vocab": feat.max_vocab,
                    "lang_stop_df": feat.lang_stop_df,
                    "num_stop_words": len(feat.stop_words),
                }
                if isinstance(feat, WordFeaturizer)
                else {"max_df": feat.max_df, "stop_letterless": feat.stop_letterless, "num_stopped": feat.num_stopped}
            ),
        },
        "tokenizer": {"fingerprint": tok.fingerprint, "source": str(tokenizer), "vocab_size": tok.vocab_size}
        if tok is not None
        else None,
        "fit": {
            "num_docs": len(sample.texts),
            "population": sample.total_docs,
            "inertia": km.inertia,
            "n_iter": km.n_iter,
            "converged": km.converged,
            "sizes": np.bincount(km.labels, minlength=num_clusters).tolist(),
            "seconds": round(t2 - t0, 2),
        },
    }
    arrays = {"idf": feat.lsa.idf, "components": feat.lsa.components, "centroids": km.centroids}
    sp_ids = feat.sentencepiece_ids if isinstance(feat, SubwordFeaturizer) else None
    if sp_ids is not None:  # the fit took sentencepiece's fast path: assignment encodes the same way
        assert isinstance(feat, SubwordFeaturizer) and feat.sentencepiece_model is not None  # (taken with it)
        from xlbtm.formats.clusterer import TOKENIZER_DIR

        # the tokenizer dir is copied whole into the artifact, so the model keeps its file name there
        meta["encoder"] = {"kind": "sentencepiece", "model": f"{TOKENIZER_DIR}/{feat.sentencepiece_model.name}"}
        arrays["sp_to_id"] = np.asarray(sp_ids, dtype=np.int64)
    save_clusterer(
        output_dir,
        meta,
        arrays,
        vocab=getattr(feat, "vocab", None) if featurizer == "word" else None,
        tokenizer_dir=tok.path if tok is not None else None,
    )
    return load_clusterer(output_dir, tokenizer=tok), sample


# ------------------------------------------------------------------------------------------------ typology


def language_token_counts(
    data_dir, langs: Sequence[str], tokenizer=None, *, skip_bad_lines: bool = False, parallel_side: str | None = None
) -> dict[str, int]:
    """Per-language size of the corpus: tokenizer tokens when a tokenizer is given, else characters."""
    from xlbtm.corpus import ReadStats, find_jsonl_files, iter_file

    counts = Counter({lang: 0 for lang in langs})
    stats = ReadStats()
    for p in find_jsonl_files(data_dir):
        batch: list[tuple[str, str]] = []
        for doc in iter_file(p, p.as_posix(), skip_bad_lines=skip_bad_lines, stats=stats, parallel_side=parallel_side):
            if doc.lang is None or doc.lang not in counts:  # (counts has only str keys)
                continue
            if tokenizer is None:
                counts[doc.lang] += len(doc.text)
                continue
            batch.append((doc.lang, doc.text))
            if len(batch) >= 256:
                _count_batch(batch, tokenizer, counts)  # clears the batch
        if batch:
            _count_batch(batch, tokenizer, counts)
    return dict(counts)


def _count_batch(batch, tokenizer, counts) -> None:
    ids = tokenizer.encode_batch([t for _, t in batch])
    for (lang, _), i in zip(batch, ids):
        counts[lang] += len(i)
    batch.clear()


def train_typological_clusterer(
    langs: Sequence[str],
    num_clusters: int,
    output_dir,
    *,
    mode: str = "balanced",
    data_dir=None,
    tokenizer=None,
    skip_bad_lines: bool = False,
    parallel_side: str | None = None,
):
    from xlbtm.cluster import typology
    from xlbtm.formats.clusterer import save_clusterer
    from xlbtm.io import refuse_overlap

    refuse_overlap({"--output-dir": output_dir}, {"--data-dir": data_dir, "--tokenizer": tokenizer})

    langs = [lang.strip() for lang in langs if lang.strip()]
    if not langs:
        raise UsageError("--langs is empty: give comma-separated ISO 639-1 codes, e.g. --langs en,fr,de")
    if len(set(langs)) != len(langs):
        dup = [lang for lang, n in Counter(langs).items() if n > 1]
        raise UsageError(f"--langs lists {', '.join(dup)} more than once")
    feats, codes = typology.language_features(langs)
    weights = None
    if mode == "balanced":
        if data_dir is not None:
            tok = None
            if tokenizer is not None:
                from xlbtm.tokenizer import load_tokenizer

                tok = load_tokenizer(tokenizer)
            counts = language_token_counts(
                data_dir, langs, tok, skip_bad_lines=skip_bad_lines, parallel_side=parallel_side
            )
            missing = [lang for lang in langs if counts[lang] == 0]
            if missing:
                raise InputError(
                    f"no documents with lang {', '.join(missing)} below --data-dir (check the "
                    f"'lang' fields or --langs)",
                    data_dir,
                )
            weights = np.array([counts[lang] for lang in langs], dtype=np.float64)
        groups = typology.balanced_groups(feats, num_clusters, weights)
    elif mode == "xelm":
        groups = typology.xelm_groups(feats, num_clusters)
    else:
        raise UsageError(f"--typology-mode must be balanced or xelm, got {mode!r}")
    lang_to_cluster = {lang: int(g) for lang, g in zip(langs, groups)}
    meta = {
        "kind": "typological",
        "num_clusters": num_clusters,
        "featurizer": None,
        "balanced": mode == "balanced",
        "params": {
            "mode": mode,
            "feature_set": typology.FEATURE_SET,
            "langs": list(langs),
            "uriel_codes": codes,
            "objective": typology.BALANCED_OBJECTIVE if mode == "balanced" else typology.XELM_PROCEDURE,
            "weights": None if weights is None else {lang: float(w) for lang, w in zip(langs, weights)},
            "weight_unit": None if weights is None else ("tokens" if tokenizer else "characters"),
            **({"parallel_side": parallel_side} if parallel_side and weights is not None else {}),
        },
        "tokenizer": None,
        "lang_to_cluster": lang_to_cluster,
    }
    save_clusterer(output_dir, meta, {"features": feats.astype(np.float32)})
    return load_clusterer(output_dir)


# ---------------------------------------------------------------------------------------------------- eval


def evaluate(clusterer, texts: Sequence[str], langs: Sequence[str | None], top_n: int = 10) -> dict:
    """Cluster sizes, top terms (TF-IDF), `lang` mix per cluster and NMI(cluster, lang)."""
    from sklearn.metrics import normalized_mutual_info_score

    if clusterer.kind == "typological":
        labels = clusterer.predict([{"text": t, "lang": lang} for t, lang in zip(texts, langs)])
    else:
        labels = clusterer.predict(texts)
    k = clusterer.num_clusters
    sizes = np.bincount(labels, minlength=k).tolist()
    mix: list[Counter[str]] = [Counter() for _ in range(k)]
    for lab, lang in zip(labels, langs):
        mix[lab][lang or "null"] += 1
    out = {"num_docs": len(texts), "sizes": sizes, "lang_mix": [dict(m.most_common()) for m in mix]}
    if clusterer.kind == "tfidf":
        out["top_terms"] = clusterer.top_terms(top_n)
    if any(lang for lang in langs):
        out["nmi_lang"] = float(normalized_mutual_info_score([lang or "null" for lang in langs], labels))
    return out


def format_eval(ev: dict) -> str:
    lines = [
        f"{ev['num_docs']} documents" + (f", NMI(cluster, lang) = {ev['nmi_lang']:.3f}" if "nmi_lang" in ev else "")
    ]
    for j, size in enumerate(ev["sizes"]):
        mix = ", ".join(f"{lang} {n}" for lang, n in list(ev["lang_mix"][j].items())[:6])
        lines.append(f"cluster {j}: {size} docs | lang: {mix}")
        if "top_terms" in ev:
            lines.append(f"    top terms: {' '.join(ev['top_terms'][j])}")
    return "\n".join(lines)


def run_train_clusterer(cfg: ClustererConfig) -> None:
    """`train_clusterer` end to end: fit a TF-IDF or typological clusterer into cfg.output_dir (and evaluate
    it with cfg.eval), or evaluate an existing one (cfg.eval alone)."""
    if cfg.eval and cfg.num_clusters is None and not cfg.typological:
        _evaluate_into(load_clusterer(cfg.output_dir), cfg)  # evaluate an existing clusterer
        return
    if cfg.num_clusters is None:
        raise UsageError("--num-clusters is required")
    # an existing clusterer at --output-dir is replaced only when it is this command's own for the same inputs:
    # another run's clusterer (its experts and cluster files name its fingerprint) is kept
    inputs = {"--data-dir": cfg.data_dir, "--tokenizer": cfg.tokenizer}
    refuse_overlap({"--output-dir": cfg.output_dir}, inputs)  # (first: its message names the input)
    owner = output_owner("train_clusterer", inputs)
    check_replaceable(cfg.output_dir, "--output-dir", owner, is_dir=True)
    if cfg.typological:
        if not cfg.langs:
            raise UsageError("--typological needs --langs (comma-separated ISO 639-1 codes, e.g. en,fr,de)")
        if cfg.balanced:
            log.info("--balanced is implied by --typology-mode balanced and ignored with --typological")
        c = train_typological_clusterer(
            cfg.langs.split(","),
            cfg.num_clusters,
            cfg.output_dir,
            mode=cfg.typology_mode,
            data_dir=cfg.data_dir,
            tokenizer=cfg.tokenizer,
            skip_bad_lines=cfg.skip_bad_lines,
            parallel_side=cfg.parallel_side,
        )
        write_output_record(cfg.output_dir, owner, is_dir=True)
        log.info(f"wrote {cfg.output_dir}: {describe(c)}")
        print(json.dumps(c.lang_to_cluster, ensure_ascii=False))
        if cfg.eval and cfg.data_dir:
            _evaluate_into(c, cfg)
        return
    if cfg.data_dir is None:
        raise UsageError("--data-dir is required (corpus root, split or shard directory)")
    c, sample = train_tfidf_clusterer(
        cfg.data_dir,
        cfg.num_clusters,
        cfg.output_dir,
        balanced=cfg.balanced,
        featurizer=cfg.featurizer,
        tokenizer=cfg.tokenizer,
        max_docs=cfg.max_docs,
        seed=cfg.seed,
        skip_bad_lines=cfg.skip_bad_lines,
        parallel_side=cfg.parallel_side,
        device=cfg.device,
    )
    write_output_record(cfg.output_dir, owner, is_dir=True)
    log.info(f"wrote {cfg.output_dir}: {describe(c)}")
    if cfg.eval:
        _evaluate_into(c, cfg, sample)


def _evaluate_into(clusterer, cfg: ClustererConfig, sample: Sample | None = None) -> None:
    """Print the clusterer's evaluation on `sample` (default: drawn from cfg.data_dir) and write eval.json."""
    if sample is None:
        if cfg.data_dir is None:
            raise UsageError("--eval needs --data-dir (the documents to evaluate on)")
        sample = sample_documents(
            cfg.data_dir, cfg.max_docs, cfg.seed, skip_bad_lines=cfg.skip_bad_lines, parallel_side=cfg.parallel_side
        )
    ev = evaluate(clusterer, sample.texts, sample.langs)
    print(format_eval(ev))
    write_json(Path(cfg.output_dir) / "eval.json", ev)
