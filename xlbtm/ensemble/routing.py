"""Routing: the cluster posterior of every prefix of a document.

The weight of expert k for predicting token j of a document is

    w_jk = softmax_k( -||h_j - c_k||^2 / T )

with h_j the L2-normalized featurization of the prefix tokens [0, j) and c_k the clusterer's centroids.

Why this is cheap for the subword featurizer: TF-IDF (+ its own L2 norm) followed by the SVD projection is
linear in the term counts up to a positive scalar, and that scalar disappears in the final normalization:

    h_j = normalize( sum_{t in prefix} idf[t] * components[:, t] )

so one running d-dim sum per document gives every h_j in O(T*d) instead of re-featurizing each of the T
prefixes (O(T^2) tokens). The rows idf[t] * components[:, t] are the clusterer's own (`Lsa.projection`): the
router reads the clusterer's model, it does not rebuild one (raw counts, as the clusterer is fit).

Empty prefix (j = 0), or a prefix whose featurization is the zero vector (only unknown tokens): xlbtm gives
every expert the same weight (uniform), since the clusterer has seen nothing. `cbtm_compat` instead does what
c-BTM does: the zero vector is kept, so the weights are softmax(-||c_k||^4 / T).

c-BTM compatibility (`cbtm_compat=True`): c-BTM's kmeans returns *squared* euclidean distances and its scorer
squares them again: softmax(-(||h - c_k||^2)^2 / T) (kernelmachine/cbtm, metaseq/sequence_scorer_btm.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.cluster.distance import sq_distances
from xlbtm.ensemble.mixing import one_hot_log_weights, topk_renormalize
from xlbtm.errors import InputError

log = get_logger("ensemble")

# ------------------------------------------------------------------------------------------ weights


def log_weights(
    sqdist: torch.Tensor,
    temperature: float,
    *,
    topk: int = -1,
    cbtm_compat: bool = False,
    empty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared distances [N, K] -> log routing weights [K, N].

    `empty` ([N] bool) marks positions whose prefix featurizes to zero; they get uniform weights (xlbtm) or
    c-BTM's weights from the zero vector (`cbtm_compat`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    d = sqdist.to(torch.float64)
    logits = -(d * d if cbtm_compat else d) / temperature
    if empty is not None and not cbtm_compat:
        logits = torch.where(empty.view(-1, 1), torch.zeros_like(logits), logits)
    log_w = torch.log_softmax(logits, dim=1).T.contiguous()  # [K, N]
    return topk_renormalize(log_w, topk)


TokenIds = Sequence[int] | np.ndarray  # a document's or prefix's token ids: a list or a 1-D int array


def squared_distances(h: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||h_i - c_k||^2 for rows of h [N, d] and centroids [K, d] -> [N, K] float64: k-means' own
    `sq_distances`, so routing and clustering measure distance the same way."""
    return sq_distances(np.asarray(h, dtype=np.float64), np.asarray(centroids, dtype=np.float64))


def hard_log_weights(doc_cluster: np.ndarray, clusters: list[int], doc_of_token):
    """Hard routing (lang) of each document to the expert of its cluster -> (log weights [K, N], the chosen
    row per token, -1 where none). A document whose cluster is excluded has no expert of its own: it gets
    the uniform mixture of the remaining experts (never a silent reroute to some other single expert)."""
    row_of = {c: k for k, c in enumerate(clusters)}
    doc_row = np.asarray([row_of.get(int(c), -1) for c in doc_cluster], dtype=np.int64)
    orphans = doc_row < 0
    if orphans.any():
        log.warning(
            f"{int(orphans.sum())} documents belong to excluded cluster(s) "
            f"{sorted({int(c) for c in doc_cluster[orphans]})}; they get the uniform mixture of the "
            f"remaining {len(clusters)} experts"
        )
    which = torch.from_numpy(doc_row)[doc_of_token]
    log_w = one_hot_log_weights(which.clamp_min(0), len(clusters))
    log_w[:, which < 0] = -math.log(len(clusters))
    return log_w, which


# ---------------------------------------------------------------------------- linear subword featurizer


class LinearFeaturizer:
    """The clusterer's own linear model (`xlbtm.cluster.featurize.Lsa`: raw-count TF-IDF, then its SVD), read
    the way routing needs it: one projection row per token (idf folded in), so a prefix's features are the
    normalized running sum of its tokens' rows. Token ids outside the clusterer's vocabulary add nothing.
    dtype: "float32" (default, the clusterer's own: half the memory at V = 256k) or "float64".
    """

    def __init__(self, lsa, dtype: str = "float32"):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.lsa, self.dtype = lsa, dtype
        if dtype == "float32":
            self.rows = lsa.projection_tensor()  # [V, d] contiguous: a document is a row gather
        else:
            p = (np.asarray(lsa.components, dtype=np.float64) * np.asarray(lsa.idf, dtype=np.float64)[None, :]).T
            self.rows = torch.from_numpy(np.ascontiguousarray(p))

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def contributions(self, token_ids: TokenIds):
        """[T, d] torch: what each position adds to the running sum (its token's row; 0 outside the vocabulary)."""
        ids = np.asarray(token_ids, dtype=np.int64)
        known = (ids >= 0) & (ids < self.rows.shape[0])
        contrib = self.rows[torch.from_numpy(np.where(known, ids, 0))]
        if not known.all():
            contrib *= torch.from_numpy(known).to(contrib.dtype)[:, None]
        return contrib

    def featurize(self, token_ids: TokenIds) -> np.ndarray:
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

    Either `featurizer` (a LinearFeaturizer over the clusterer's Lsa: incremental, O(T*d)) or `featurize_many` (id sequences ->
    [n, d] normalized features; every prefix is featurized from scratch in one batched call, O(T^2), for
    featurizers that are not linear in the token counts, e.g. word TF-IDF over decoded text).
    """

    def __init__(
        self,
        centroids: np.ndarray,
        featurizer: LinearFeaturizer | None = None,
        featurize_many: Callable[[list[Sequence[int]]], np.ndarray] | None = None,
    ):
        if (featurizer is None) == (featurize_many is None):
            raise ValueError("give exactly one of featurizer (incremental) or featurize_many (recompute)")
        self.centroids = np.asarray(centroids, dtype=np.float64)
        self.featurizer = featurizer
        self.featurize_many = featurize_many

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def _centroids_t(self, dtype):
        cache = self.__dict__.setdefault("_ct", {})
        if dtype not in cache:
            cache[dtype] = torch.from_numpy(self.centroids).to(dtype)
        return cache[dtype]

    @property
    def incremental(self) -> bool:
        return self.featurizer is not None

    def distances(self, token_ids: TokenIds) -> tuple[np.ndarray, np.ndarray]:
        T = len(token_ids)
        if self.featurizer is not None:
            # running sums P_j of the prefixes [0, j) (row 0: empty), then
            # ||h - c||^2 = 1 - 2 (P . c) / ||P|| + ||c||^2 with h = P / ||P||: no [T, d] division needed
            contrib = self.featurizer.contributions(token_ids)
            P = torch.zeros_like(contrib)
            if T > 1:
                torch.cumsum(contrib[:-1], 0, out=P[1:])
            return self._sum_distances(P)
        assert self.featurize_many is not None  # (the constructor's invariant: exactly one of the two)
        ids = list(np.asarray(token_ids).tolist())
        h = (
            np.asarray(self.featurize_many([ids[:j] for j in range(T)]), dtype=np.float64)
            if T
            else np.zeros((0, self.centroids.shape[1]))
        )
        empty = np.linalg.norm(h, axis=1) <= 1e-6
        return squared_distances(h, self.centroids), empty

    def _sum_distances(self, P) -> tuple[np.ndarray, np.ndarray]:
        """(sqdist [n, K], empty [n]) of the running sums P [n, d] (linear featurizer)."""
        C = self._centroids_t(P.dtype)
        norm = torch.linalg.vector_norm(P, dim=1)
        empty = norm <= 1e-12
        c2 = (C * C).sum(1)
        dots = (P @ C.T) / torch.where(empty, torch.ones_like(norm), norm)[:, None]
        d = torch.where(empty[:, None], c2[None, :], 1.0 - 2.0 * dots + c2[None, :])
        return d.clamp_min_(0.0).numpy().astype(np.float64), empty.numpy()

    def prefix_state(self, token_ids: Sequence[int] = ()) -> PrefixState:
        """The routing state of a growing prefix (generation): `push` tokens, read `distances()`."""
        return PrefixState(self, token_ids)

    def document_distances(self, token_ids: TokenIds) -> tuple[np.ndarray, bool]:
        if self.featurizer is not None:
            h = self.featurizer.featurize(token_ids)
        else:
            assert self.featurize_many is not None  # (the constructor's invariant: exactly one of the two)
            h = np.asarray(self.featurize_many([list(np.asarray(token_ids).tolist())]), dtype=np.float64)[0]
        empty = bool(np.linalg.norm(h) <= 1e-6)
        return squared_distances(h[None, :], self.centroids)[0], empty


class PrefixState:
    """Squared distances of one growing prefix to the centroids, updated as tokens are appended.

    Linear featurizer: the running sum of the tokens' rows, O(d) per pushed token, and `distances()` reads it
    through the same formula as `Router.distances` (row j of that equals `distances()` after pushing
    ids[:j]). Other featurizers re-featurize the whole prefix on every `distances()` call.
    """

    def __init__(self, router: Router, token_ids: Sequence[int] = ()):
        self.router = router
        self.ids: list[int] = []
        f = router.featurizer
        self.sum = None if f is None else f.rows.new_zeros(f.dim)
        self.push(token_ids)

    def push(self, token_ids: Sequence[int]) -> None:
        ids = [int(t) for t in token_ids]
        if not ids:
            return
        self.ids.extend(ids)
        if self.sum is not None:
            assert self.router.featurizer is not None  # (sum is kept for a linear featurizer only)
            self.sum += self.router.featurizer.contributions(ids).sum(0)

    def distances(self) -> tuple[np.ndarray, bool]:
        """(sqdist [K] float64, empty) of the prefix pushed so far."""
        if self.sum is not None:
            d, empty = self.router._sum_distances(self.sum[None, :])
            return d[0], bool(empty[0])
        assert self.router.featurize_many is not None  # (no featurizer: the router has featurize_many)
        h = np.asarray(self.router.featurize_many([list(self.ids)]), dtype=np.float64)
        return squared_distances(h, self.router.centroids)[0], bool(np.linalg.norm(h[0]) <= 1e-6)


def router_from_clusterer(clusterer, tokenizer=None) -> Router:
    """Build a Router from a loaded clusterer artifact (xlbtm.cluster.artifact.TfidfClusterer).

    Subword featurizer: the incremental one-pass router over the clusterer's idf and SVD components; the
    token ids must come from the tokenizer the clusterer was fit with (checked by fingerprint when known).
    Word featurizer: each prefix is decoded to text and featurized by the clusterer (exact, O(T^2)).
    A clusterer without centroids (typological) cannot route by prefix.
    """
    centroids = getattr(clusterer, "centroids", None)
    if centroids is None:
        raise ValueError(
            f"clusterer of kind {getattr(clusterer, 'kind', '?')!r} has no centroids; "
            "use --ensemble-type lang for a typological clusterer"
        )
    kind = getattr(clusterer, "featurizer_kind", "subword")
    if kind == "subword":
        want = getattr(clusterer, "tokenizer_fingerprint", None)
        if tokenizer is not None and want and tokenizer.fingerprint != want:
            raise InputError(
                f"the clusterer was fit on the ids of another tokenizer (fingerprint {want[:12]}) "
                f"than the experts' ({tokenizer.fingerprint[:12]}); its subword features cannot "
                "route these experts' tokens",
                getattr(clusterer, "path", None),
            )
        return Router(np.asarray(centroids), featurizer=LinearFeaturizer(clusterer.lsa))
    if tokenizer is None:
        raise ValueError(f"a {kind} clusterer featurizes text: routing needs the experts' tokenizer to decode")

    def featurize_many(id_lists):
        return clusterer.transform([tokenizer.decode(ids) for ids in id_lists])

    return Router(np.asarray(centroids), featurize_many=featurize_many)
