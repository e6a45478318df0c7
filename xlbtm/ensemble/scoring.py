"""Per-expert scoring with on-disk caches, and the cheap mixing step that turns caches into results.

Job dir layout (`--job-dir`):
    docs.npz, docs.json           the eval documents, tokenized and truncated once (shared by every expert)
    scores/<name>.npz (+ .json)   one expert's per-token log-probs [N] (float32), keyed by docs + weights
    routing.npz (+ .json)         squared distances to the centroids per token [N, K] and per document [D, K]
    result.json, report.md, ppl_by_language.png

Scoring an expert is the only expensive step; it runs once per expert (one process, local job or SLURM
array element each) and is skipped when its cache matches. Every --temperature / --topk setting then reuses
the same caches.

One document per sample (c-BTM's eval: no packing across documents). CLM: the document is read as the
trainer's `</s>`-separated stream `</s> t_0 .. t_{L-1}` and scored whole, in windows of the context the
experts were trained with (`window`, default their tokens_per_sample): window i feeds stream positions
[i*stride, i*stride + window) and scores the targets no earlier window scored, so every token is predicted
exactly once and never from a position the model did not train on (`clm_windows`). stride = window
(the default) is c-BTM's non-overlapping blocks; a smaller stride gives later tokens more context.
MLM: pseudo-perplexity. Input `<s> t_0 .. t_{L-2}`; the scored positions are split into MLM_GROUPS
deterministic groups (position i in group i % MLM_GROUPS); one forward pass per group masks that group, so
each token is predicted exactly once with ~1/MLM_GROUPS of the document masked (close to the 15% the
experts trained with). MLM routing uses the whole unmasked document.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.corpus import Corpus, Document
from xlbtm.ensemble.experts import load_model
from xlbtm.ensemble.routing import router_from_clusterer
from xlbtm.errors import InputError, UsageError
from xlbtm.io import atomic_path, read_json, sha256_json, write_json
from xlbtm.runtime import resolve_device
from xlbtm.tokenizer import load_tokenizer

log = get_logger("ensemble")

MLM_GROUPS = 7
DOCS = "docs.npz"


# ------------------------------------------------------------------------------------------ documents


@dataclass
class EvalDocs:
    tokens: np.ndarray  # [N] int64, all scored tokens, documents concatenated
    offsets: np.ndarray  # [D+1] int64
    sp_ids: list[str]
    langs: list[str]  # "null" when a document has none
    meta: dict  # dataset, tokenizer_fingerprint, max_tokens, fingerprint

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    def doc(self, d: int) -> np.ndarray:
        return self.tokens[self.offsets[d] : self.offsets[d + 1]]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


def prepare_docs(
    job_dir: str | os.PathLike,
    data_dir,
    subset: str,
    tokenizer,
    max_tokens: int | None,
    max_docs: int | None = None,
    skip_bad_lines: bool = False,
    *,
    langs: set[str] | None = None,
) -> EvalDocs:
    """Tokenize the eval split once (cached in the job dir); documents truncated to `max_tokens` targets
    (None: whole documents, which CLM scoring reads in windows), the truncation counted in the log.
    `langs`: keep only documents whose `lang` is one of them (`max_docs` then counts those)."""
    corpus = Corpus(data_dir, skip_bad_lines=skip_bad_lines)
    docs: list[Document] = []
    for doc in corpus.iter_documents(subset):
        if max_docs is not None and len(docs) >= max_docs:
            break
        if langs is None or doc.lang in langs:
            docs.append(doc)
    ids = tokenizer.encode_batch([d.text for d in docs])
    kept = [(d, x[:max_tokens]) for d, x in zip(docs, ids) if len(x) > 0]  # empty documents predict nothing
    cut = sum(len(x) for x in ids) - sum(len(x) for _, x in kept)
    if cut:
        log.warning(
            f"{cut} tokens of {sum(len(x) > (max_tokens or 0) for x in ids)} documents beyond the "
            f"{max_tokens} positions a masked LM reads are not scored"
        )
    if len(kept) < len(docs):
        log.info(f"skipping {len(docs) - len(kept)} documents that tokenize to nothing")
    if not kept:
        only = f" in languages {sorted(langs)}" if langs is not None else ""
        raise InputError(f"no scorable documents{only} in split '{subset}'", Path(data_dir) / subset)
    lengths = np.array([len(x) for _, x in kept], dtype=np.int64)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.asarray(x, dtype=np.int64) for _, x in kept])
    sp_ids = [d.sp_id for d, _ in kept]
    doc_langs = [d.lang or "null" for d, _ in kept]
    meta = {
        "dataset": subset,
        "data_dir": str(Path(data_dir).resolve()),
        "documents": len(kept),
        "tokens": int(offsets[-1]),
        "max_tokens": None if max_tokens is None else int(max_tokens),
        "tokenizer_fingerprint": tokenizer.fingerprint,
    }
    # FIXME: this entry was meant for a `langs` filter only ("only then: the fingerprint of unfiltered
    # documents stays what it was"), but `langs` used to be rebound to the documents' languages just above,
    # so every call writes the sorted per-document list. Kept as is (the fingerprints of cached docs
    # depend on it); the intended code is `if langs is not None: meta["langs"] = sorted(langs)`.
    meta["langs"] = sorted(doc_langs)
    meta["fingerprint"] = sha256_json({**meta, "sp_ids": sp_ids, "tokens_sha": _sha(tokens)})
    out = EvalDocs(tokens, offsets, sp_ids, doc_langs, meta)
    save_docs(job_dir, out)
    return out


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def save_docs(job_dir, docs: EvalDocs) -> None:
    job_dir = Path(job_dir)
    save_npz(job_dir / DOCS, tokens=docs.tokens, offsets=docs.offsets)
    write_json(job_dir / "docs.json", {**docs.meta, "sp_ids": docs.sp_ids, "langs": docs.langs})


def load_docs(job_dir) -> EvalDocs:
    job_dir = Path(job_dir)
    meta = read_json(job_dir / "docs.json")
    with np.load(job_dir / DOCS, allow_pickle=False) as z:
        tokens, offsets = z["tokens"], z["offsets"]
    sp_ids, langs = meta.pop("sp_ids"), meta.pop("langs")
    return EvalDocs(tokens, offsets, sp_ids, langs, meta)


def save_npz(path: Path, **arrays) -> None:
    """Arrays to `path` atomically (a cache file, read back with np.load(allow_pickle=False))."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


# ------------------------------------------------------------------------------------------- scoring


def score_cache_path(job_dir, name: str) -> Path:
    return Path(job_dir) / "scores" / f"{name}.npz"


def cache_ok(path: Path, key: str) -> bool:
    """The cache file `path` exists and its `.json` sidecar records `key` (what it was computed from)."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def read_scores(job_dir, name: str) -> np.ndarray:
    with np.load(score_cache_path(job_dir, name), allow_pickle=False) as z:
        return z["logprobs"]


def score_expert(
    job_dir,
    name: str,
    expert,
    docs: EvalDocs | None = None,
    *,
    state: dict | None = None,
    device: str | None = None,
    batch_tokens: int = 8192,
    weights_key: str | None = None,
    window: int | None = None,
    stride: int | None = None,
) -> Path:
    """Score every eval token with one expert and cache the log-probs; a matching cache is reused.

    `state` replaces the expert's weights (the parameter-averaged model); `weights_key` then names them.
    CLM: `window` / `stride` as in `clm_windows` (default: the model's max_positions, non-overlapping).
    """
    docs = docs or load_docs(job_dir)
    path = score_cache_path(job_dir, name)
    what = {
        "docs": docs.fingerprint,
        "weights": weights_key or expert.fingerprint(),
        "objective": expert.objective,
        "mlm_groups": MLM_GROUPS,
    }
    if expert.objective == "clm":
        what.update(window=window, stride=stride)
    key = sha256_json(what)
    if cache_ok(path, key):
        log.info(f"{name}: cached scores found, skipping")
        return path
    device = resolve_device(device)
    model, args = load_model(expert, state)
    if expert.objective == "mlm" and docs.meta["max_tokens"] > args.max_positions:
        raise InputError(
            f"documents were truncated to {docs.meta['max_tokens']} tokens but this model takes "
            f"{args.max_positions} positions",
            expert.run_dir,
        )
    window = window or args.max_positions
    stride = stride or window
    if window > args.max_positions:
        raise InputError(f"context window {window} exceeds this model's {args.max_positions} positions", expert.run_dir)
    model.to(device)
    if expert.objective == "mlm":
        mask_id = args.extra.get("mask_id") if isinstance(args.extra, dict) else None
        if mask_id is None:
            mask_id = load_tokenizer(expert.meta.tokenizer).mask_id
            assert mask_id is not None, "a masked LM's tokenizer has <mask>"
        lp = _score_mlm(model, args, docs, device, batch_tokens, int(mask_id))
    else:
        lp = _score_clm(model, args, docs, device, batch_tokens, window, stride)
    save_npz(path, logprobs=lp.astype(np.float32))
    write_json(
        path.with_suffix(".json"),
        {
            "key": key,
            "expert": str(expert.run_dir),
            "name": name,
            "tokens": int(len(lp)),
            "ppl": float(np.exp(-lp.mean())),
        },
    )
    log.info(f"{name}: scored {docs.num_docs} documents, {len(lp)} tokens, ppl {np.exp(-lp.mean()):.3f}")
    return path


def scoring_window(experts, context_window: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """(window, stride) for CLM scoring: --context-window, else the context the experts trained with
    (expert.json's tokens_per_sample; max_positions for imported models), never past max_positions: a
    position no expert trained on is out of distribution for every side of the comparison alike."""
    max_pos = min(int(e.meta.model_args["max_positions"]) for e in experts)
    trained = [int(e.meta.data.get("tokens_per_sample") or max_pos) for e in experts]
    window = context_window or min(trained)
    if window > max_pos:
        raise UsageError(f"--context-window {window} exceeds the experts' {max_pos} positions")
    stride = stride or window
    if stride > window:
        raise UsageError(f"--stride {stride} exceeds the context window {window}")
    return window, stride


def length_batches(lengths: np.ndarray, batch_tokens: int):
    """Documents grouped by similar length so padding stays small; each batch <= batch_tokens padded."""
    order = np.argsort(-lengths, kind="stable")
    batch: list[int] = []
    for d in order.tolist():
        if batch and (len(batch) + 1) * int(lengths[batch[0]]) > batch_tokens:
            yield batch
            batch = []
        batch.append(d)
    if batch:
        yield batch


LOGIT_ROWS = 2048  # positions per output-projection chunk: [2048, 256k] fp32 logits = 2 GiB at XGLM's vocab


def _gather_logprobs(model, inp, pad, targets, need=None):
    """log p(targets) at the positions in `need` ([B, T] bool; default: all non-pad), 0 elsewhere.

    Logits are only made for the needed positions, in chunks, so a 256k vocabulary never materializes a
    [B, T, V] tensor (MLM only needs the masked ~1/7 of the positions).
    """
    need = ~pad if need is None else need
    if not (hasattr(model, "forward_hidden") and hasattr(model, "output")):
        logits = model(inp, pad).float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return torch.where(need, lp, torch.zeros_like(lp))
    h = model.forward_hidden(inp, pad)[need]  # [M, D]
    tg = targets[need]
    vals = []
    for s in range(0, h.shape[0], LOGIT_ROWS):
        logits = model.output(h[s : s + LOGIT_ROWS]).float()
        vals.append(torch.log_softmax(logits, dim=-1).gather(-1, tg[s : s + LOGIT_ROWS, None])[:, 0])
    out = torch.zeros(need.shape, dtype=torch.float32, device=h.device)
    if vals:
        out[need] = torch.cat(vals)
    return out


def clm_windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a document's stream `</s> t_0 .. t_{length-1}` as (start, end, first_scored).

    Window (a, e, f) feeds stream positions [a, e) (stream position 0 is the `</s>`, position i > 0 is
    t_{i-1}), predicts t_a .. t_{e-1}, and scores t_f .. t_{e-1}: each target exactly once, with at least
    `window - stride` tokens of context after the first window.
    """
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    out, a, done = [], 0, 0
    while done < length:
        e = min(a + window, length)
        out.append((a, e, done))
        done, a = e, a + stride
    return out


def _score_clm(model, args, docs: EvalDocs, device, batch_tokens, window: int, stride: int) -> np.ndarray:
    out = np.zeros(len(docs.tokens), dtype=np.float64)
    rows = [
        (d, a, e, f)
        for d in range(docs.num_docs)
        for a, e, f in clm_windows(int(docs.offsets[d + 1] - docs.offsets[d]), window, stride)
    ]
    lengths = np.asarray([e - a for _, a, e, _ in rows], dtype=np.int64)
    with torch.inference_mode():
        for batch in length_batches(lengths, batch_tokens):
            T = int(lengths[batch].max())
            inp = torch.full((len(batch), T), args.pad_id, dtype=torch.long)
            tgt = torch.zeros((len(batch), T), dtype=torch.long)
            for i, r in enumerate(batch):
                d, a, e, _ = rows[r]
                x = torch.from_numpy(docs.doc(d))
                if a == 0:
                    inp[i, 0] = args.eos_id
                    inp[i, 1:e] = x[: e - 1]
                else:
                    inp[i, : e - a] = x[a - 1 : e - 1]
                tgt[i, : e - a] = x[a:e]
            pad = torch.arange(T)[None, :] >= torch.from_numpy(lengths[batch])[:, None]
            lp = _gather_logprobs(model, inp.to(device), pad.to(device), tgt.to(device)).cpu().double()
            for i, r in enumerate(batch):
                d, a, e, f = rows[r]
                o = int(docs.offsets[d])
                out[o + f : o + e] = lp[i, f - a : e - a].numpy()
    return out


def _score_mlm(model, args, docs: EvalDocs, device, batch_tokens, mask_id: int) -> np.ndarray:
    out = np.zeros(len(docs.tokens), dtype=np.float64)
    lengths = np.diff(docs.offsets)
    with torch.inference_mode():
        for batch in length_batches(lengths + 1, max(batch_tokens // MLM_GROUPS, 1)):
            T = int(lengths[batch].max()) + 1  # <s> + document
            rows, tgts, where = [], [], []
            for d in batch:
                x = torch.from_numpy(docs.doc(d))
                base = torch.full((T,), args.pad_id, dtype=torch.long)
                base[0] = args.bos_id
                base[1 : len(x) + 1] = x
                for g in range(min(MLM_GROUPS, len(x))):
                    pos = torch.arange(g, len(x), MLM_GROUPS)  # document positions of this group
                    row = base.clone()
                    row[pos + 1] = mask_id
                    rows.append(row)
                    tgts.append(base)
                    where.append((d, pos))
            inp = torch.stack(rows)
            tgt = torch.stack(tgts)
            pad = inp == args.pad_id
            need = inp == mask_id
            lp = _gather_logprobs(model, inp.to(device), pad.to(device), tgt.to(device), need.to(device)).cpu().double()
            for i, (d, pos) in enumerate(where):
                out[docs.offsets[d] + pos.numpy()] = lp[i, pos + 1].numpy()
    return out


# ------------------------------------------------------------------------------------------- routing


def compute_routing(job_dir, clusterer, docs: EvalDocs, tokenizer=None) -> dict[str, np.ndarray]:
    """Squared distances per token (prefix [0, j)) and per document, cached in routing.npz."""
    path = Path(job_dir) / "routing.npz"
    key = sha256_json({"docs": docs.fingerprint, "clusterer": clusterer.fingerprint})
    if cache_ok(path, key):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    router = router_from_clusterer(clusterer, tokenizer)
    K = router.num_clusters
    tok = np.zeros((len(docs.tokens), K), dtype=np.float64)
    tok_empty = np.zeros(len(docs.tokens), dtype=bool)
    doc = np.zeros((docs.num_docs, K), dtype=np.float64)
    doc_empty = np.zeros(docs.num_docs, dtype=bool)
    for d in range(docs.num_docs):
        ids = docs.doc(d)
        s, e = docs.offsets[d], docs.offsets[d + 1]
        tok[s:e], tok_empty[s:e] = router.distances(ids)
        doc[d], doc_empty[d] = router.document_distances(ids)
    out = {"token_sqdist": tok, "token_empty": tok_empty, "doc_sqdist": doc, "doc_empty": doc_empty}
    save_npz(path, **out)
    write_json(path.with_suffix(".json"), {"key": key, "incremental": router.incremental})
    return out
