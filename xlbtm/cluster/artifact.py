"""Clusterers as objects: TF-IDF (nearest centroid on LSA features) and typological (by language). Their one
on-disk format, reader and writer are `xlbtm.formats.clusterer`.

For the ensemble router (subword): `c.idf`, `c.components`, `c.centroids`, `c.projection` (= idf[:, None] *
components.T) and `c.featurize_token_ids(ids)` (the reference; see `xlbtm.cluster.featurize`). Distances
are squared Euclidean between L2-normalized features and (unnormalized) centroids: `c.distances(feats)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlbtm.errors import InputError, UsageError

# -------------------------------------------------------------------------------------------- documents


def _text_of(doc) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict):
        return doc["text"]
    return doc.text


def _where(doc) -> tuple[str | None, int | None, str]:
    """(path, 1-based line, label) of a Document/dict for error messages."""
    sp_id = doc.get("sp_id") if isinstance(doc, dict) else getattr(doc, "sp_id", None)
    if sp_id and "|" in sp_id:
        path, _, line = sp_id.rpartition("|")
        if line.isdigit():
            return path, int(line) + 1, sp_id
    return None, None, repr(sp_id)


def _lang_of(doc) -> str | None:
    if isinstance(doc, str):
        raise UsageError(
            "a typological clusterer assigns by the document's 'lang' field: pass documents "
            "(xlbtm.corpus.Document or dicts with 'lang'), not bare texts"
        )
    return doc.get("lang") if isinstance(doc, dict) else doc.lang


# ------------------------------------------------------------------------------------------- clusterers


class TfidfClusterer:
    kind = "tfidf"

    def __init__(
        self,
        meta: dict,
        idf: np.ndarray,
        components: np.ndarray,
        centroids: np.ndarray,
        path: Path | None = None,
        vocab: list[str] | None = None,
        tokenizer=None,
        sp_to_id: np.ndarray | None = None,
    ):
        from xlbtm.cluster.featurize import Lsa

        self.meta = meta
        self.path = path
        self.num_clusters = int(meta["num_clusters"])
        self.fingerprint = meta.get("fingerprint")
        self.featurizer_kind = meta["featurizer"]
        self.tokenizer_fingerprint = (meta.get("tokenizer") or {}).get("fingerprint")
        self.lsa = Lsa(idf=idf, components=components)
        self.centroids = centroids
        self.vocab = vocab
        self._tokenizer = tokenizer
        self._featurizer = None
        # subword: sentencepiece ids -> ours, when the fit recorded its encoder (`xlbtm.formats.clusterer`)
        self.sp_to_id = sp_to_id if (meta.get("encoder") or {}).get("kind") == "sentencepiece" else None

    # arrays the router needs ----------------------------------------------------------------------------
    @property
    def idf(self) -> np.ndarray:
        return self.lsa.idf

    @property
    def components(self) -> np.ndarray:
        return self.lsa.components

    @property
    def projection(self) -> np.ndarray:
        return self.lsa.projection

    def featurize_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        return self.lsa.featurize_token_ids(ids)

    # featurizer -----------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self.featurizer_kind != "subword":
            return None
        if self._tokenizer is None:
            from xlbtm.tokenizer import load_tokenizer

            if self.path is None:
                raise UsageError("this clusterer has no tokenizer attached")
            from xlbtm.formats.clusterer import TOKENIZER_DIR

            tok = load_tokenizer(self.path / TOKENIZER_DIR)
            self._check_tokenizer(tok)
            self._tokenizer = tok
        return self._tokenizer

    def _check_tokenizer(self, tok) -> None:
        if self.tokenizer_fingerprint and tok.fingerprint != self.tokenizer_fingerprint:
            raise InputError(
                f"tokenizer {tok.path} does not match the one this clusterer was trained with "
                f"(fingerprint {tok.fingerprint[:12]} != {self.tokenizer_fingerprint[:12]})",
                self.path,
            )

    @property
    def featurizer(self):
        if self._featurizer is None:
            from xlbtm.cluster.featurize import SubwordFeaturizer, WordFeaturizer

            if self.featurizer_kind == "word":
                self._featurizer = WordFeaturizer(vocab=self.vocab, lsa=self.lsa)
            elif self._tokenizer is None and self.sp_to_id is not None and self.path is not None:
                # the encoder the fit used, recorded in the artifact: no HF tokenizer (and no transformers
                # import) unless something asks for it (top terms)
                self._featurizer = SubwordFeaturizer(
                    lambda: self.tokenizer,
                    lsa=self.lsa,
                    sentencepiece=(self.path / self.meta["encoder"]["model"], self.sp_to_id),
                )
            else:
                self._featurizer = SubwordFeaturizer(self.tokenizer, lsa=self.lsa)
        return self._featurizer

    def transform(self, texts_or_docs: Iterable) -> np.ndarray:
        return self.featurizer.transform([_text_of(d) for d in texts_or_docs])

    def distances(self, feats: np.ndarray) -> np.ndarray:
        """[n, K] squared Euclidean distances between features and centroids."""
        from xlbtm.cluster.distance import sq_distances

        return sq_distances(np.asarray(feats, dtype=np.float32), self.centroids)

    def predict(self, texts_or_docs: Iterable) -> np.ndarray:
        """Nearest-centroid cluster of every text/document (c-BTM's rule), int64 [n]."""
        return self.distances(self.transform(texts_or_docs)).argmin(1).astype(np.int64)

    def predict_balanced(self, texts_or_docs: Iterable) -> np.ndarray:
        from xlbtm.cluster.kmeans import predict_balanced

        return predict_balanced(self.transform(texts_or_docs), self.centroids).astype(np.int64)

    def top_terms(self, n: int = 10) -> list[list[str]]:
        from xlbtm.cluster.featurize import top_terms

        return top_terms(self.featurizer, self.centroids, n)


class TypologicalClusterer:
    kind = "typological"

    def __init__(self, meta: dict, features: np.ndarray | None = None, path: Path | None = None):
        self.meta = meta
        self.path = path
        self.num_clusters = int(meta["num_clusters"])
        self.fingerprint = meta.get("fingerprint")
        self.lang_to_cluster: dict[str, int] = {k: int(v) for k, v in meta["lang_to_cluster"].items()}
        self.features = features
        self.featurizer_kind = None
        self.tokenizer_fingerprint = None

    def cluster_of(self, lang: str | None, doc=None) -> int:
        if lang is None or lang == "":
            path, line, label = _where(doc)
            field = getattr(doc, "lang_field", "lang")
            raise InputError(
                f"document {label} has no string '{field}' field; a typological clusterer assigns by "
                f"language (add '{field}' or use a TF-IDF clusterer)",
                path,
                line,
            )
        k = self.lang_to_cluster.get(lang)
        if k is None:
            path, line, label = _where(doc)
            raise InputError(
                f"document {label} has lang '{lang}', which this typological clusterer does not "
                f"know (it knows {', '.join(sorted(self.lang_to_cluster))}; retrain with --langs "
                f"including it)",
                path,
                line,
            )
        return k

    def predict(self, docs: Iterable) -> np.ndarray:
        return np.array([self.cluster_of(_lang_of(d), d) for d in docs], dtype=np.int64)

    predict_balanced = predict  # language groups are fixed; balance comes from how they were formed


# ------------------------------------------------------------------------------------------------ load


def load_clusterer(path: str | os.PathLike, tokenizer=None, *, verify: bool = True):
    """Load a TfidfClusterer or TypologicalClusterer from its artifact dir (`xlbtm.formats.clusterer`)."""
    from xlbtm.formats.clusterer import META, read_clusterer

    path = Path(path)
    meta, arrays, vocab = read_clusterer(path, verify=verify)
    if meta["kind"] == "typological":
        return TypologicalClusterer(meta, arrays.get("features"), path)
    if meta["kind"] != "tfidf":
        raise InputError(f"unknown clusterer kind {meta['kind']!r}", path / META)
    c = TfidfClusterer(
        meta, arrays["idf"], arrays["components"], arrays["centroids"], path, vocab, sp_to_id=arrays.get("sp_to_id")
    )
    if tokenizer is not None:
        if meta.get("featurizer") != "subword":
            raise UsageError("--tokenizer is only used by subword clusterers")
        c._check_tokenizer(tokenizer)
        c._tokenizer = tokenizer
    return c


def describe(c: Any) -> str:
    s = f"{c.kind} clusterer, K={c.num_clusters}, fingerprint {str(c.fingerprint)[:12]}"
    if c.kind == "tfidf":
        s += f", featurizer {c.featurizer_kind}, {c.lsa.vocab_size} terms x {c.lsa.dim} dims"
    return s
