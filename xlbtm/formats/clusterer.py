"""The clusterer artifact: one directory format for TF-IDF and typological clusterers. No pickle anywhere.

    <dir>/clusterer.json        format, kind, num_clusters, featurizer, params, tokenizer fingerprint, file
                                hashes, and `fingerprint` = sha256 of all of that (so it covers the arrays' bytes)
    <dir>/arrays.safetensors    tfidf: idf [V], components [d, V], centroids [K, d]
                                typological: features [L, F] (NaN = missing URIEL value)
    <dir>/vocab.json            word featurizer: the term of every id (id 0 = [UNK])
    <dir>/tokenizer/            subword featurizer: a copy of the seed tokenizer dir (its fingerprint is in
                                clusterer.json and checked on load)
    clusterer.json `encoder`    subword, when the fit encoded with sentencepiece's C++ library (the fast
                                path): {"kind": "sentencepiece", "model": "tokenizer/<file>"}; the model's
                                sha256 is in `files` and its ids -> ours are the array `sp_to_id` [pieces]

`read_clusterer(path)` verifies the file hashes and the fingerprint, so a modified or truncated artifact is
an error, never silently different clusters. The objects built from it are `xlbtm.cluster.artifact`'s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from xlbtm.errors import InputError, UsageError
from xlbtm.io import atomic_dir, read_json, sha256_file, sha256_json, write_json

FORMAT = "xlbtm-clusterer/1"
META = "clusterer.json"
ARRAYS = "arrays.safetensors"
VOCAB = "vocab.json"
TOKENIZER_DIR = "tokenizer"


def _fingerprint(meta: dict) -> str:
    return sha256_json({k: v for k, v in meta.items() if k != "fingerprint"})


def save_clusterer(
    out_dir: str | os.PathLike,
    meta: dict,
    arrays: dict[str, np.ndarray],
    *,
    vocab: list[str] | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
) -> str:
    """Write an artifact directory atomically (built in a temp dir, then renamed). Returns the fingerprint."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / META).is_file() and any(out_dir.iterdir()):
        raise UsageError(f"--output-dir {out_dir} exists and is not a clusterer directory; refusing to overwrite it")
    with atomic_dir(out_dir) as tmp:  # readers see the old artifact or the new one, never a half-written one
        files = {}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / ARRAYS))
        files[ARRAYS] = sha256_file(tmp / ARRAYS)
        if vocab is not None:
            write_json(tmp / VOCAB, vocab, indent=0)
            files[VOCAB] = sha256_file(tmp / VOCAB)
        if tokenizer_dir is not None:
            if Path(tokenizer_dir).is_file():  # a bare sentencepiece model file
                (tmp / TOKENIZER_DIR).mkdir()
                shutil.copy2(tokenizer_dir, tmp / TOKENIZER_DIR / Path(tokenizer_dir).name)
            else:
                shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        model = (meta.get("encoder") or {}).get("model")
        if model is not None:  # the sentencepiece model assignment encodes with: verified like the arrays
            files[model] = sha256_file(tmp / model)
        meta = {"format": FORMAT, **meta, "files": files}
        meta["fingerprint"] = _fingerprint(meta)
        write_json(tmp / META, meta)
    return meta["fingerprint"]


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not (path / META).is_file():
        raise InputError(f"not a clusterer directory (no {META}; train one with xlbtm.scripts.train_clusterer)", path)
    meta = read_json(path / META)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(
            f"unknown clusterer format {meta.get('format') if isinstance(meta, dict) else None!r} (expected {FORMAT})",
            path / META,
        )
    return meta


def read_clusterer(
    path: str | os.PathLike, *, verify: bool = True
) -> tuple[dict, dict[str, np.ndarray], list[str] | None]:
    """(meta, arrays, vocab) of an artifact dir. Never executes code from it (json + safetensors only). With
    `verify`, file hashes and the fingerprint must match clusterer.json."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_meta(path)
    for key in ("kind", "num_clusters", "fingerprint", "files"):
        if key not in meta:
            raise InputError(f"clusterer.json lacks '{key}'", path / META)
    if verify:
        for name, digest in meta["files"].items():
            f = path / name
            if not f.is_file():
                raise InputError(f"clusterer file {name} is missing", path)
            if sha256_file(f) != digest:
                raise InputError(f"clusterer file {name} was modified or is corrupt (sha256 mismatch)", f)
        if _fingerprint(meta) != meta["fingerprint"]:
            raise InputError("clusterer.json was edited: its fingerprint does not match its content", path / META)
    try:
        arrays = load_file(str(path / ARRAYS))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise InputError(f"cannot read arrays: {e}", path / ARRAYS) from None
    vocab = read_json(path / VOCAB) if meta.get("featurizer") == "word" else None
    return meta, arrays, vocab
