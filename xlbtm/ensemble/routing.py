"""Routing: the cluster posterior of every prefix of a document.

The weight of expert k for predicting token j of a document is

    w_jk = softmax_k( -||h_j - c_k||^2 / T )

with h_j the L2-normalized featurization of the prefix tokens [0, j) and c_k the clusterer's centroids.

Why this is cheap for the subword featurizer: TF-IDF (+ its own L2 norm) followed by the SVD projection is
linear in the term counts up to a positive scalar, and that scalar disappears in the final normalization:

    h_j = normalize( sum_{t in prefix} tf_weight(t) * idf[t] * components[:, t] )

so one running d-dim sum per document gives every h_j in O(T*d) instead of re-featurizing each of the T
prefixes (O(T^2) tokens). Sublinear tf (1 + log n) is handled by adding the increment f(n) - f(n-1) for the
n-th occurrence of a token; binary tf by counting only the first occurrence.

Empty prefix (j = 0), or a prefix whose featurization is the zero vector (only ignored tokens): xlbtm gives
every expert the same weight (uniform), since the clusterer has seen nothing. `cbtm_compat` instead does what
c-BTM does: the zero vector is kept, so the weights are softmax(-||c_k||^4 / T).

c-BTM compatibility (`cbtm_compat=True`): c-BTM's kmeans returns *squared* euclidean distances and its scorer
squares them again: softmax(-(||h - c_k||^2)^2 / T) (kernelmachine/cbtm, metaseq/sequence_scorer_btm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch


# ------------------------------------------------------------------------------------------ weights

def log_weights(sqdist: torch.Tensor, temperature: float, *, topk: int = -1, cbtm_compat: bool = False,
                empty: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distances [N, K] -> log routing weights [K, N].

    `empty` ([N] bool) marks positions whose prefix featurizes to zero; they get uniform weights (xlbtm) or
    c-BTM's weights from the zero vector (`cbtm_compat`).
    """
    from xlbtm.ensemble.mixing import topk_renormalize

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    d = sqdist.to(torch.float64)
    logits = -(d * d if cbtm_compat else d) / temperature
    if empty is not None and not cbtm_compat:
        logits = torch.where(empty.view(-1, 1), torch.zeros_like(logits), logits)
    log_w = torch.log_softmax(logits, dim=1).T.contiguous()  # [K, N]
    return topk_renormalize(log_w, topk)


def squared_distances(h: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||h_i - c_k||^2 for rows of h [N, d] and centroids [K, d] -> [N, K] float64: k-means' own
    `sq_distances`, so routing and clustering measure distance the same way."""
    import torch

    from xlbtm.cluster.kmeans import sq_distances

    return sq_distances(torch.from_numpy(np.asarray(h, dtype=np.float64)),
                        torch.from_numpy(np.asarray(centroids, dtype=np.float64))).numpy()


# ---------------------------------------------------------------------------- linear subword featurizer

@dataclass
class LinearFeaturizer:
    """TF-IDF over token ids followed by an SVD projection; everything routing needs from the clusterer.

    idf: [V]; components: [d, V] (TruncatedSVD.components_); tf: "raw" | "sublinear" | "binary";
    ignore_ids: token ids the featurizer drops (specials, stopwords), they never change h.
    dtype: "float32" (default, like the clusterer's reference featurizer: half the memory at V = 256k and
    ~2x faster) or "float64".
    """

    idf: np.ndarray
    components: np.ndarray
    tf: str = "raw"
    ignore_ids: frozenset = field(default_factory=frozenset)
    dtype: str = "float32"

    def __post_init__(self):
        import torch

        if self.tf not in ("raw", "sublinear", "binary"):
            raise ValueError(f"unknown tf weighting {self.tf!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        self.idf = np.asarray(self.idf, dtype=np.float64)
        comps = np.asarray(self.components)
        if comps.ndim != 2 or comps.shape[1] != self.idf.shape[0]:
            raise ValueError(f"components {comps.shape} do not match idf {self.idf.shape}")
        # one row per token, idf folded in: a document's tokens are then a contiguous row gather (the
        # column gather from [d, V] is strided and ~50x slower at V = 256k)
        rows = (comps.T * self.idf[:, None]).astype(self.dtype)
        self.rows = torch.from_numpy(np.ascontiguousarray(rows))
        self.components = comps

    @property
    def _ignore_arr(self) -> np.ndarray:
        return np.fromiter(self.ignore_ids, dtype=np.int64, count=len(self.ignore_ids))

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def _increments(self, token_ids: Sequence[int]) -> np.ndarray:
        """How much each position adds to the (unnormalized) tf of its token: [T] float."""
        ids = np.asarray(token_ids, dtype=np.int64)
        inc = np.ones(len(ids), dtype=np.float64)
        V = self.idf.shape[0]
        bad = (ids < 0) | (ids >= V)
        if self.ignore_ids:
            bad |= np.isin(ids, self._ignore_arr)
        inc[bad] = 0.0
        if self.tf != "raw":
            # occurrence number n of each token (1-based) -> f(n) - f(n-1)
            seen: dict[int, int] = {}
            for i, t in enumerate(ids.tolist()):
                if inc[i] == 0.0:
                    continue
                n = seen.get(t, 0) + 1
                seen[t] = n
                if self.tf == "binary":
                    inc[i] = 1.0 if n == 1 else 0.0
                else:  # sublinear: f(n) = 1 + log n
                    inc[i] = 1.0 if n == 1 else float(np.log(n) - np.log(n - 1))
        return inc

    def contributions(self, token_ids: Sequence[int]):
        """[T, d] torch: what each position adds to the running sum (idf[t] * components[:, t] * tf increment)."""
        import torch

        ids = np.asarray(token_ids, dtype=np.int64)
        inc = self._increments(ids)
        safe = torch.from_numpy(np.where(inc != 0.0, ids, 0))
        contrib = self.rows[safe]
        if not (inc == 1.0).all():
            contrib *= torch.from_numpy(inc).to(contrib.dtype)[:, None]
        return contrib

    def prefix_sums(self, token_ids: Sequence[int]) -> np.ndarray:
        """Unnormalized projections of every prefix [0, j), j = 0..T -> [T+1, d] (row 0 is the empty prefix)."""
        import torch

        c = self.contributions(token_ids)
        out = torch.zeros((c.shape[0] + 1, c.shape[1]), dtype=c.dtype)
        torch.cumsum(c, 0, out=out[1:])
        return out.numpy().astype(np.float64)

    def prefix_features(self, token_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(h [T+1, d] L2-normalized prefix featurizations, empty [T+1] bool where the projection is zero)."""
        p = self.prefix_sums(token_ids)
        norm = np.linalg.norm(p, axis=1, keepdims=True)
        empty = norm[:, 0] <= 1e-12
        h = np.where(empty[:, None], 0.0, p / np.where(empty[:, None], 1.0, norm))
        return h, empty

    def featurize(self, token_ids: Sequence[int]) -> np.ndarray:
        """The whole sequence's normalized featurization [d] (zero vector when nothing counts)."""
        p = self.contributions(token_ids).sum(0).numpy().astype(np.float64)
        n = np.linalg.norm(p)
        return p / n if n > 1e-12 else np.zeros_like(p)


# ----------------------------------------------------------------------------------------------- router

class Router:
    """Per-position squared distances to the centroids, for one featurization of prefixes.

    `distances(token_ids)` returns (sqdist [T, K], empty [T] bool) where row j uses the prefix [0, j) (the
    context available when predicting token j). `document_distances` uses the whole document (MLM experts,
    which see the unmasked document).

    Either `featurizer` (a LinearFeaturizer: incremental, O(T*d)) or `featurize_many` (id sequences ->
    [n, d] normalized features; every prefix is featurized from scratch in one batched call, O(T^2), for
    featurizers that are not linear in the token counts, e.g. word TF-IDF over decoded text).
    """

    def __init__(self, centroids: np.ndarray, featurizer: LinearFeaturizer | None = None,
                 featurize_many: Callable[[list[Sequence[int]]], np.ndarray] | None = None):
        if (featurizer is None) == (featurize_many is None):
            raise ValueError("give exactly one of featurizer (incremental) or featurize_many (recompute)")
        self.centroids = np.asarray(centroids, dtype=np.float64)
        self.featurizer = featurizer
        self.featurize_many = featurize_many

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def _centroids_t(self, dtype):
        import torch

        cache = self.__dict__.setdefault("_ct", {})
        if dtype not in cache:
            cache[dtype] = torch.from_numpy(self.centroids).to(dtype)
        return cache[dtype]

    @property
    def incremental(self) -> bool:
        return self.featurizer is not None

    def distances(self, token_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        T = len(token_ids)
        if self.featurizer is not None:
            import torch

            # running sums P_j of the prefixes [0, j) (row 0: empty), then
            # ||h - c||^2 = 1 - 2 (P . c) / ||P|| + ||c||^2 with h = P / ||P||: no [T, d] division needed
            contrib = self.featurizer.contributions(token_ids)
            P = torch.zeros_like(contrib)
            if T > 1:
                torch.cumsum(contrib[:-1], 0, out=P[1:])
            C = self._centroids_t(P.dtype)
            norm = torch.linalg.vector_norm(P, dim=1)
            empty = norm <= 1e-12
            c2 = (C * C).sum(1)
            dots = (P @ C.T) / torch.where(empty, torch.ones_like(norm), norm)[:, None]
            d = torch.where(empty[:, None], c2[None, :], 1.0 - 2.0 * dots + c2[None, :])
            return d.clamp_min_(0.0).numpy().astype(np.float64), empty.numpy()
        ids = list(np.asarray(token_ids).tolist())
        h = np.asarray(self.featurize_many([ids[:j] for j in range(T)]), dtype=np.float64) if T \
            else np.zeros((0, self.centroids.shape[1]))
        empty = np.linalg.norm(h, axis=1) <= 1e-6
        return squared_distances(h, self.centroids), empty

    def document_distances(self, token_ids: Sequence[int]) -> tuple[np.ndarray, bool]:
        if self.featurizer is not None:
            h = self.featurizer.featurize(token_ids)
        else:
            h = np.asarray(self.featurize_many([list(np.asarray(token_ids).tolist())]), dtype=np.float64)[0]
        empty = bool(np.linalg.norm(h) <= 1e-6)
        return squared_distances(h[None, :], self.centroids)[0], empty


def router_from_clusterer(clusterer, tokenizer=None) -> Router:
    """Build a Router from a loaded clusterer artifact (xlbtm.cluster.artifact.TfidfClusterer).

    Subword featurizer: the incremental one-pass router over the clusterer's idf and SVD components; the
    token ids must come from the tokenizer the clusterer was fit with (checked by fingerprint when known).
    Word featurizer: each prefix is decoded to text and featurized by the clusterer (exact, O(T^2)).
    A clusterer without centroids (typological) cannot route by prefix.
    """
    from xlbtm.errors import InputError

    centroids = getattr(clusterer, "centroids", None)
    if centroids is None:
        raise ValueError(f"clusterer of kind {getattr(clusterer, 'kind', '?')!r} has no centroids; "
                         "use --ensemble-type lang for a typological clusterer")
    kind = getattr(clusterer, "featurizer_kind", "subword")
    if kind == "subword":
        want = getattr(clusterer, "tokenizer_fingerprint", None)
        if tokenizer is not None and want and tokenizer.fingerprint != want:
            raise InputError(f"the clusterer was fit on the ids of another tokenizer (fingerprint {want[:12]}) "
                             f"than the experts' ({tokenizer.fingerprint[:12]}); its subword features cannot "
                             "route these experts' tokens", getattr(clusterer, "path", None))
        lf = LinearFeaturizer(np.asarray(clusterer.idf), np.asarray(clusterer.components))
        return Router(np.asarray(centroids), featurizer=lf)
    if tokenizer is None:
        raise ValueError(f"a {kind} clusterer featurizes text: routing needs the experts' tokenizer to decode")

    def featurize_many(id_lists):
        return clusterer.transform([tokenizer.decode(ids) for ids in id_lists])

    return Router(np.asarray(centroids), featurize_many=featurize_many)
