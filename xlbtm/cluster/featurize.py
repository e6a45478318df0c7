"""Document features for clustering: TF-IDF -> TruncatedSVD(100) -> L2 normalize (c-BTM's LSA vectors).

Two ways to turn text into term ids, one linear model on top:

- `word` (c-BTM-compatible): lowercase, word tokens, numbers dropped, stop words dropped. c-BTM's
  `\\w\\w+` token pattern leaves Chinese/Japanese text unsegmented (a whole clause becomes one "word" that
  occurs once, so CJK documents get almost no features). We split Han/Hiragana/Katakana into single
  characters instead and keep `\\w\\w+` words elsewhere (the tokenizer: `xlbtm.cluster.words`).
  Stop words: scikit-learn's English list (what c-BTM uses) and tokens starting with a digit (c-BTM's
  `#NUMBER`, which c-BTM also stops). For the other languages, idf already down-weights function words;
  learned per-language stop words are available (`WordFeaturizer(lang_stop_df=0.9)`: every term in more
  than 90% of the sampled documents of some language with >= 20 documents, when the fit documents carry
  `lang`), off by default because they cost language purity (NMI vs `lang`: benchmarks/BENCHMARKS.md,
  Clustering).
- `subword` (default): the seed tokenizer's token ids. Language-agnostic, handles CJK, and the ensemble
  router can update a prefix's features token by token. Pieces without a letter and pieces in more than half
  of the fit documents are left out (`SubwordFeaturizer.stopped`: zero projection rows, so still linear).

The linear model (`Lsa`), shared by both. For a text with term ids t_1..t_m (raw counts tf_v, i.e. TF is
*linear in the counts*: no sublinear tf, like c-BTM's TfidfVectorizer defaults):

    tfidf_v   = tf_v * idf_v,           idf_v = ln((1 + N) / (1 + df_v)) + 1      (scikit-learn smooth idf)
    z         = tfidf @ components.T    components: [d, V] from TruncatedSVD fit on l2-normalized tfidf rows
    features  = z / ||z||

scikit-learn l2-normalizes the tfidf row before the SVD; that positive scale cancels in the final
normalization, so   features = normalize(sum_i P[t_i])   with   P = idf[:, None] * components.T  ([V, d]).
An incremental router keeps s = sum of P rows over the prefix and normalizes (s = 0 -> all-zero features).
`Lsa.featurize_token_ids` is the reference implementation. Terms never seen while fitting have all-zero
component columns, so they contribute nothing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from xlbtm.cluster.words import WordTokenizer, english_stop_words, word_tokens

SVD_DIM = 100
_Fast = tuple[Any, np.ndarray]  # (sentencepiece processor, its ids -> the tokenizer's)
UNK = "[UNK]"


# ------------------------------------------------------------------------------------------- linear model


@dataclass
class Lsa:
    idf: np.ndarray  # [V] float32
    components: np.ndarray  # [d, V] float32
    _proj: np.ndarray | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.idf.shape[0])

    @property
    def projection(self) -> np.ndarray:
        """P = idf[:, None] * components.T, [V, d] float32 C-contiguous: features = normalize(sum of P rows)."""
        if self._proj is None:
            self._proj = np.ascontiguousarray((self.components * self.idf[None, :]).T, dtype=np.float32)
        return self._proj

    def projection_tensor(self):
        """`projection` as a torch tensor sharing its memory (the ensemble router's row gathers)."""
        import torch

        return torch.from_numpy(self.projection)

    def featurize_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """[n, d] float32 L2-normalized features of id sequences (the reference the router must match)."""
        flat, offsets = _flatten(ids)
        if flat.size and (flat.min() < 0 or flat.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}) (tokenizer does not match the clusterer?)")
        return self.featurize_flat(flat, offsets)

    def featurize_flat(self, flat: np.ndarray, offsets: np.ndarray, projection: np.ndarray | None = None) -> np.ndarray:
        """Same as `featurize_token_ids` for ids concatenated in `flat`, document i starting at offsets[i].
        `projection` (default: `projection`) may be `projection_rows(lut)`, for ids in another numbering: its
        rows are bitwise P[lut], so the sums (same rows, same order) are bitwise the same.

        The row sums are a CSR matrix of ones times P (scipy, single-threaded C++): each document's rows are
        added in token order in float32, bitwise what torch's embedding_bag(mode="sum") gives (checked in the
        tests), without importing torch, which costs an assignment process ~1 CPU-s (BENCHMARKS.md, Clustering
        at scale)."""
        import scipy.sparse as sp

        proj = self.projection if projection is None else projection
        flat = np.asarray(flat)
        offsets = np.asarray(offsets)
        index = np.int32 if flat.size < 2**31 else np.int64
        indptr = np.empty(offsets.size + 1, dtype=index)
        indptr[:-1] = offsets
        indptr[-1] = flat.size
        ones = sp.csr_matrix(
            (np.ones(flat.size, dtype=np.float32), flat.astype(index, copy=False), indptr),
            shape=(offsets.size, proj.shape[0]),
        )
        z = np.asarray(ones @ proj, dtype=np.float32)
        norm = np.sqrt(np.einsum("ij,ij->i", z, z))
        z /= np.maximum(norm, np.float32(1e-12))[:, None]  # an empty document stays all-zero
        return z

    def projection_rows(self, lut: np.ndarray) -> np.ndarray:
        """P[lut] as a [len(lut), d] float32 array, computed from idf/components without materializing P
        (the elementwise products are the same float32 operations, so the rows equal P's bitwise)."""
        lut = np.asarray(lut, dtype=np.int64)
        if lut.size and (lut.min() < 0 or lut.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}) (tokenizer does not match the clusterer?)")
        return np.ascontiguousarray((self.components[:, lut] * self.idf[lut][None, :]).T, dtype=np.float32)


CHUNK = 1024  # documents per featurization chunk: bounds memory whatever the number of texts


def _chunks(texts: Sequence[str], n: int | None = None):
    n = n or CHUNK
    for i in range(0, len(texts), n):
        yield texts[i : i + n]


def _flatten(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated ids int64, start offset of every sequence)."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.zeros(len(seqs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return flat, offsets


def _bag_difference(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> int:
    """Tokens by which the bags of ids of paired sequences differ (L1 of the count vectors, summed)."""
    from collections import Counter

    total = 0
    for x, y in zip(a, b):
        if x != y:
            cx, cy = Counter(x), Counter(y)
            total += sum(((cx - cy) + (cy - cx)).values())
    return total


def _num_threads() -> int:
    """sentencepiece encoder threads: the active thread limit (`xlbtm.cluster.threads`), else the CPUs this
    process may use (a SLURM task's allocation, not the whole node)."""
    from xlbtm.cluster.threads import current_threads

    return current_threads()


def count_matrix(flat: np.ndarray, offsets: np.ndarray, vocab_size: int):
    """Raw term counts [n, V] as scipy CSR, from ids concatenated in `flat` (document i from offsets[i])."""
    import scipy.sparse as sp

    indptr = np.append(np.asarray(offsets, dtype=np.int64), np.int64(flat.size))
    m = sp.csr_matrix(
        (np.ones(flat.size, dtype=np.float64), np.asarray(flat, dtype=np.int64), indptr),
        shape=(len(offsets), vocab_size),
    )
    m.sum_duplicates()
    return m


def fit_lsa(counts, n_components: int = SVD_DIM, seed: int = 0, zero_columns: np.ndarray | None = None) -> Lsa:
    """scikit-learn TfidfTransformer (smooth idf, l2 rows) + TruncatedSVD, as c-BTM's pipeline does.
    `zero_columns` (e.g. stop words) are removed before the fit, like TfidfVectorizer's stop words."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    counts = counts.tocsc(copy=True)
    if zero_columns is not None and zero_columns.size:
        keep = np.ones(counts.shape[1], dtype=bool)
        keep[zero_columns] = False
        counts = counts.multiply(keep[None, :].astype(np.float64)).tocsc()
    counts = counts.tocsr()
    counts.eliminate_zeros()
    n, v = counts.shape
    tfidf = TfidfTransformer(smooth_idf=True, norm="l2").fit(counts)
    # float32: the randomized SVD's passes over x are memory-bound; float32 halves them (2.2x faster at 50k
    # documents x 92k terms, BENCHMARKS.md, Clustering at scale) and the features are float32 anyway
    x = tfidf.transform(counts).astype(np.float32)
    d = max(1, min(n_components, n - 1, v - 1))
    svd = TruncatedSVD(n_components=d, random_state=seed, algorithm="randomized", n_iter=5)
    from xlbtm.cluster.threads import limit_threads, threads_for

    with limit_threads(threads_for(n * (d + 10))):  # the randomized SVD's dense blocks are n x (d + 10)
        svd.fit(x)
    idf = tfidf.idf_.astype(np.float32)
    comps = svd.components_.astype(np.float32)
    unseen = np.asarray(counts.sum(0)).ravel() == 0  # never seen (or stopped): no contribution
    comps[:, unseen] = 0.0
    return Lsa(idf=idf, components=np.ascontiguousarray(comps))


# ------------------------------------------------------------------------------------------- featurizers


class SubwordFeaturizer:
    """TF-IDF over the seed tokenizer's ids. When the tokenizer dir holds the SentencePiece model, encoding
    goes through the sentencepiece C++ library (faster than the HF Rust unigram encoder: BENCHMARKS.md,
    Clustering) with ids mapped to the tokenizer's ids; it is checked against `tokenizer.encode_batch` on the first
    texts it sees and dropped if their bags of ids (all TF-IDF sees) differ in more than 1% of the tokens (ties
    between equal-score segmentations of symbol runs can differ; their TF-IDF effect is negligible). Counting
    differing *documents* instead made the choice depend on document order: two long documents among the first
    64 dropped the fast path for a whole 50k-document fit, ~50x slower (BENCHMARKS.md, Clustering at scale)."""

    kind = "subword"

    def __init__(
        self,
        tokenizer,
        lsa: Lsa | None = None,
        *,
        fast: bool = True,
        max_df: float = 0.5,
        stop_letterless: bool = True,
        sentencepiece: tuple | None = None,
    ):
        """`tokenizer`: an `xlbtm.tokenizer.Tokenizer`, or a function that loads it when first needed.
        `sentencepiece`: (model file, its ids -> ours) decided when the clusterer was fitted (its artifact
        records it): the fast path without a new check, so assignment never loads the HF tokenizer (and
        transformers, ~1.7 CPU-s per process) and every job encodes as the fit did."""
        self._tokenizer = tokenizer
        self.lsa = lsa
        self.max_df = max_df
        self.stop_letterless = stop_letterless
        self.num_stopped = 0
        self.sentencepiece_model: Path | None = None  # the model file of the fast path, once taken
        # (sentencepiece processor, its ids -> ours) once the fast path is taken; False: not; None: undecided
        self._fast: _Fast | Literal[False] | None = None if fast else False
        if sentencepiece is not None:
            model, lut = sentencepiece
            sp = self._load_sentencepiece(model)
            if sp.get_piece_size() != len(lut):
                from xlbtm.errors import InputError

                raise InputError(
                    f"sentencepiece model has {sp.get_piece_size()} pieces, the clusterer's sp_to_id {len(lut)}", model
                )
            self._fast = (sp, np.asarray(lut))
        self._sp_proj: tuple[Lsa, np.ndarray] | None = None  # (lsa, P rows in sentencepiece id order)
        # assignment threads share one featurizer: one decision (on the first texts), seen by all of them
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        if callable(self._tokenizer):
            self._tokenizer = self._tokenizer()
        return self._tokenizer

    @property
    def sentencepiece_ids(self) -> np.ndarray | None:
        """The fast path's map from sentencepiece ids to ours once it was taken (what a fitted clusterer
        records), else None."""
        return self._fast[1] if self._fast else None

    def _fast_encoder(self, probe: Sequence[str]) -> _Fast | None:
        if self._fast is None:
            with self._lock:
                if self._fast is None:
                    self._fast = self._decide_fast(probe)
        return self._fast or None

    def _load_sentencepiece(self, model: Path):
        import sentencepiece as spm

        self.sentencepiece_model = Path(model)
        return spm.SentencePieceProcessor(model_file=str(model))

    def _decide_fast(self, probe: Sequence[str]) -> _Fast | Literal[False]:
        """(sentencepiece processor, its ids -> ours) when its bags of ids agree with the tokenizer's, else False."""
        fast: _Fast | Literal[False] = False
        try:
            from xlbtm.tokenizer import find_sp_model

            model = find_sp_model(Path(self.tokenizer.path))
            if model is not None:
                sp = self._load_sentencepiece(model)
                lut = np.array(
                    [self.tokenizer.token_to_id(sp.id_to_piece(i)) for i in range(sp.get_piece_size())], dtype=object
                )
                if all(v is not None for v in lut):
                    lut = lut.astype(np.int64)
                    probe = list(probe[:64])
                    ref = self.tokenizer.encode_batch(probe)
                    got = [lut[np.asarray(i, dtype=np.int64)].tolist() for i in sp.encode(probe)]
                    if _bag_difference(got, ref) <= 0.01 * max(1, sum(map(len, ref))):
                        fast = (sp, lut)
        except Exception:  # noqa: BLE001 - any problem: use the reference encoder
            fast = False
        if not fast:
            self.sentencepiece_model = None
        return fast

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        fast = self._fast_encoder(texts)
        if fast is None:
            return self.tokenizer.encode_batch(list(texts))
        sp, lut = fast
        return [lut[np.asarray(i, dtype=np.int64)].tolist() for i in sp.encode(list(texts))]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [T] in the tokenizer's numbering, offsets [n]) of the concatenated encodings."""
        fast = self._fast_encoder(texts)
        if fast is None:
            return _flatten(self.tokenizer.encode_batch(list(texts)))
        flat, offsets = self._sp_flat(fast[0], texts)
        return fast[1][flat], offsets

    @staticmethod
    def _sp_flat(sp, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """sentencepiece ids (its own numbering) of a batch, concatenated, and per-text offsets. The C++
        encoder returns int32 buffers (sentencepiece >= 0.2.1 `return_type="numpy"`): no Python int per
        token, which was a third of the time of the list-of-lists API."""
        texts = list(texts)
        try:
            seqs = sp.encode(texts, num_threads=_num_threads(), return_type="numpy")
        except (TypeError, ValueError):  # older sentencepiece: lists of Python ints
            return _flatten(sp.encode(texts, num_threads=_num_threads()))
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int32)
        offsets = np.zeros(len(seqs), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        if flat.size < 2**31:
            flat, offsets = flat.astype(np.int32, copy=False), offsets.astype(np.int32)
        return flat, offsets

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """[n, d] features of one chunk. Fast path: the projection's rows are gathered once into
        sentencepiece's id order (`projection_rows(lut)`), so ids go straight from the encoder into
        embedding_bag without a per-token remapping; bitwise equal to featurize_token_ids(encode(texts))."""
        assert self.lsa is not None, "fit the featurizer first"
        fast = self._fast_encoder(texts)
        if fast is None:
            return self.lsa.featurize_flat(*self.encode_flat(texts))
        proj = self._sp_proj
        if proj is None or proj[0] is not self.lsa:
            proj = self._sp_proj = (self.lsa, self.lsa.projection_rows(fast[1]))  # a race computes it twice
        return self.lsa.featurize_flat(*self._sp_flat(fast[0], texts), projection=proj[1])

    def fit(
        self,
        texts: Sequence[str],
        langs: Sequence[str | None] | None = None,
        *,
        seed: int = 0,
        n_components: int = SVD_DIM,
    ) -> SubwordFeaturizer:
        import scipy.sparse as sp

        v = self.tokenizer.vocab_size
        counts = sp.vstack([count_matrix(*self.encode_flat(c), v) for c in _chunks(texts)]).tocsr()
        stop = self.stopped(counts)
        self.num_stopped = int(stop.sum())
        self.lsa = fit_lsa(counts, n_components, seed, zero_columns=np.nonzero(stop)[0])
        return self

    def stopped(self, counts) -> np.ndarray:
        """[V] bool: the pieces TF-IDF leaves out (their projection rows are zero, so the router's prefix sums
        stay linear). The subword analogue of what c-BTM's vectorizer drops: pieces without a letter (digits,
        punctuation, the bare word-boundary piece; c-BTM's `\\w\\w+` and #NUMBER) and, with >= 100 sampled
        documents, pieces in more than `max_df` of them (fragments like `s`, `e`, `▁-` that occur in every
        language; c-BTM's stop list). On manpages they were 38% of the tokens and ~24% of a document's tf-idf
        norm, and dropping them lifts NMI(cluster, lang) on all three corpora of BENCHMARKS.md (Clustering at
        scale), balanced and plain."""
        v = counts.shape[1]
        stop = np.zeros(v, dtype=bool)
        if self.max_df < 1.0 and counts.shape[0] >= 100:
            stop |= np.diff(counts.tocsc().indptr) > self.max_df * counts.shape[0]
        if self.stop_letterless:
            stop |= np.array(
                [not any(ch.isalpha() for ch in (self.tokenizer.id_to_token(i) or "")) for i in range(v)], dtype=bool
            )
        return stop

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        assert self.lsa is not None, "fit the featurizer first"
        parts = [self.features(c) for c in _chunks(texts)]
        return np.concatenate(parts) if parts else np.zeros((0, self.lsa.dim), dtype=np.float32)

    def term(self, i: int) -> str:
        return self.tokenizer.id_to_token(int(i)) or f"<{i}>"


class WordFeaturizer:
    kind = "word"

    def __init__(
        self,
        vocab: list[str] | None = None,
        lsa: Lsa | None = None,
        *,
        max_vocab: int = 1 << 18,
        min_df: int = 2,
        lang_stop_df: float = 1.0,
    ):
        self.vocab = vocab
        self.lsa = lsa
        self.max_vocab = max_vocab
        self.min_df = min_df
        self.lang_stop_df = lang_stop_df
        self.stop_words: list[str] = []
        self._tok = WordTokenizer(vocab) if vocab is not None else None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        assert self._tok is not None, "fit the featurizer first"
        return self._tok.encode(texts)

    def fit(
        self,
        texts: Sequence[str],
        langs: Sequence[str | None] | None = None,
        *,
        seed: int = 0,
        n_components: int = SVD_DIM,
    ) -> WordFeaturizer:
        import scipy.sparse as sp

        # per chunk: counts over the chunk's own terms; then one global term index (sorted hashes)
        parts = []
        for c in _chunks(texts):
            h, doc, starts, lens, joined = word_tokens(c)
            uh, first, inv = np.unique(h, return_index=True, return_inverse=True)
            m = sp.csr_matrix((np.ones(h.size, dtype=np.float32), (doc, inv)), shape=(len(c), uh.size))
            m.sum_duplicates()
            words_c = [joined[a : a + n] for a, n in zip(starts[first].tolist(), lens[first].tolist())]
            parts.append((uh, m, words_c))
        uniq = np.unique(np.concatenate([p[0] for p in parts])) if parts else np.zeros(0, np.uint64)
        words: list[str | None] = [None] * uniq.size
        blocks = []
        for uh, m, words_c in parts:
            gidx = np.searchsorted(uniq, uh)
            for j, w in zip(gidx.tolist(), words_c):
                if words[j] is None:
                    words[j] = w
            m = m.tocoo()
            blocks.append(sp.csr_matrix((m.data, (m.row, gidx[m.col])), shape=(m.shape[0], uniq.size)))
        terms = cast(list[str], words)  # every hash came from some chunk's words: none is left None
        counts = sp.vstack(blocks).tocsr()
        df = np.diff(counts.tocsc().indptr)
        stop = np.array([w in english_stop_words() or w[:1].isdigit() for w in terms], dtype=bool)
        if langs is not None and self.lang_stop_df < 1.0:
            langs_arr = np.array([lang or "" for lang in langs])
            for lang in sorted(set(langs_arr) - {""}):
                rows = np.nonzero(langs_arr == lang)[0]
                if rows.size < 20:
                    continue
                ldf = np.diff(counts[rows].tocsc().indptr)
                stop |= ldf > self.lang_stop_df * rows.size
        self.stop_words = sorted(w for w, s_ in zip(terms, stop) if s_)
        # min_df drops one-off terms (typos, ids) from large samples; tiny samples keep every term
        min_df = self.min_df if len(texts) >= 1000 else 1
        ok = np.nonzero(~stop & (df >= min_df))[0]
        if ok.size < 2:
            from xlbtm.errors import UsageError

            raise UsageError(
                f"the {len(texts)} sampled documents have {ok.size} usable word(s) after stop words; "
                f"TF-IDF + SVD needs at least 2 (more documents, or --featurizer subword)"
            )
        freq = np.asarray(counts.sum(0)).ravel()
        ok = ok[np.argsort(-freq[ok], kind="stable")][: self.max_vocab]
        ok = np.sort(ok)  # deterministic id order: by hash
        self.vocab = [UNK] + [terms[j] for j in ok]
        counts = counts[:, ok]
        counts = sp.hstack([sp.csr_matrix((counts.shape[0], 1)), counts]).tocsr()  # column 0 = [UNK]
        self.lsa = fit_lsa(counts, n_components, seed, zero_columns=np.array([0]))
        self._tok = WordTokenizer(self.vocab)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        assert self.lsa is not None and self._tok is not None, "fit the featurizer first"
        parts = [self.lsa.featurize_flat(*self._tok.encode_flat(c)) for c in _chunks(texts)]
        return np.concatenate(parts) if parts else np.zeros((0, self.lsa.dim), dtype=np.float32)

    def term(self, i: int) -> str:
        assert self.vocab is not None, "fit the featurizer first"
        return self.vocab[int(i)]


def top_terms(featurizer, centroids: np.ndarray, n: int = 10) -> list[list[str]]:
    """Top terms per cluster: centroids mapped back to term space (c-BTM's svd.inverse_transform)."""
    scores = centroids @ featurizer.lsa.components  # [k, V]
    return [[featurizer.term(j) for j in np.argsort(-row, kind="stable")[:n]] for row in scores]
