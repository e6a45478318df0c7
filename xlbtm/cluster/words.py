"""The `word` featurizer's tokenizer: c-BTM's `\\w\\w+` words, with Han / Hiragana / Katakana split into single
characters, tokenized as vectorized numpy over code points with a hashed vocabulary (no Python work per
token: where the speed over scikit-learn's tokenizer comes from)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))
_HASH_MULT = np.uint64(0x100000001B3)
_HASH_MIX = np.uint64(0x9E3779B97F4A7C15)
_HASH_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))  # M * M^-1 = 1 (mod 2^64)
_POWS: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


_UNKNOWN = 255
_CLASS_TABLE = np.full(0x110000, _UNKNOWN, dtype=np.uint8)  # filled lazily: see _classes


def _char_class(cp: int) -> int:
    """0 = not a word char, 1 = word char (Python's \\w: exactly str.isalnum() or "_"), 2 = CJK (a token each)."""
    ch = chr(cp)
    if not (ch.isalnum() or ch == "_"):
        return 0
    return 2 if any(lo <= cp <= hi for lo, hi in _CJK_RANGES) else 1


def _classes(cp: np.ndarray) -> np.ndarray:
    """The class of every code point. The table is filled for the code points seen so far, not for all
    1.1M up front (0.3 CPU-s per process, a tenth of an assignment job's featurizing); a text has a few
    hundred distinct ones. Threads may fill it at once: they write the same values."""
    cls = _CLASS_TABLE[cp]
    unknown = cls == _UNKNOWN
    if unknown.any():
        new = np.unique(cp[unknown])
        _CLASS_TABLE[new] = np.fromiter(map(_char_class, new.tolist()), dtype=np.uint8, count=new.size)
        cls = _CLASS_TABLE[cp]
    return cls


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(M^i, M^-i) mod 2^64 for i < n (at least; cached and grown): M is odd, so it has an inverse mod 2^64.
    One tuple in one global, so a thread never sees the two arrays from different sizes."""
    global _POWS
    pows = _POWS
    if pows[0].size < n:
        m = max(n, 2 * pows[0].size)
        with np.errstate(over="ignore"):
            fwd, inv = (
                np.cumprod(np.concatenate([[np.uint64(1)], np.full(m - 1, base, dtype=np.uint64)]), dtype=np.uint64)
                for base in (_HASH_MULT, _HASH_INV)
            )
        pows = (fwd, inv)
        _POWS = pows
    return pows


def word_tokens(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Vectorized word tokenization of lowercased texts; no Python work per token.

    Tokens: maximal runs of >= 2 non-CJK word characters (scikit-learn's `\\b\\w\\w+\\b` on text without
    CJK), and every Han/Hiragana/Katakana character on its own. Each token is identified by a 64-bit
    polynomial hash of its code points (collisions among a vocabulary of 10^6 terms: p ~ 1e-7).
    Returns (hashes [T] uint64, doc index [T], starts [T], lengths [T], the joined lowercased text).
    """
    lowered = [t.lower() for t in texts]
    joined = "\n".join(lowered)  # "\n" is not a word char: no token crosses documents
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cls = _classes(cp)
    # Token boundaries as masks over positions, so starts and ends come out sorted (no argsort to merge the
    # CJK tokens in): a token starts at a word char after a non-word char, or at any CJK char; it ends (one
    # past) after its last char, the same way.
    w = np.empty(cp.size + 2, dtype=bool)
    w[0] = w[-1] = False
    np.equal(cls, 1, out=w[1:-1])
    cjk = np.zeros(cp.size + 1, dtype=bool)
    np.equal(cls, 2, out=cjk[:-1])
    starts = np.nonzero((w[1:] > w[:-1]) | cjk)[0]
    ends = np.nonzero((w[1:] < w[:-1]) | np.concatenate([[False], cjk[:-1]]))[0]
    lens = ends - starts
    keep = (lens >= 2) | cjk[starts]  # word runs of one char are not tokens; a CJK char always is
    starts, ends, lens = starts[keep], ends[keep], lens[keep]
    if starts.size:
        # polynomial hash sum_j c[s+j] M^j of every token from prefix sums of c[i] M^i over the whole batch:
        # (P[e] - P[s]) M^-s. The same values as summing each token's chars, with a few passes over the text
        # instead of gathering every token's chars (the hash and so the vocabulary ids are unchanged).
        pw, inv = _powers(cp.size + 1)
        with np.errstate(over="ignore"):
            pre = np.zeros(cp.size + 1, dtype=np.uint64)
            np.multiply(cp, pw[: cp.size], out=pre[1:], dtype=np.uint64)
            np.cumsum(pre, out=pre)
            h = (pre[ends] - pre[starts]) * inv[starts]
            h ^= lens.astype(np.uint64) * _HASH_MIX
            # murmur3 fmix64: spread the bits so the top bits index a hash table well
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xC4CEB9FE1A85EC53)
            h ^= h >> np.uint64(33)
    else:
        h = np.zeros(0, dtype=np.uint64)
    doc_starts = np.zeros(len(texts), dtype=np.int64)
    if len(texts) > 1:
        lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(texts))
        doc_starts[1:] = np.cumsum(lengths[:-1] + 1)
    doc = np.searchsorted(doc_starts, starts, side="right").astype(np.int32) - 1  # document of every token
    return h, doc, starts, lens, joined


class WordTokenizer:
    """Maps texts to word ids with a hashed vocabulary (id 0 = [UNK]: unknown, stopped, numbers)."""

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        h, _, _, lens, _ = word_tokens(self.vocab[1:])
        if h.size != len(self.vocab) - 1:
            raise ValueError("vocabulary entries must be single word tokens")
        # open-addressing hash table (load <= 1/4, linear probing): one random access per token instead of
        # a binary search
        bits = max(4, int(np.ceil(np.log2(max(1, h.size) * 4))))
        self._shift = np.uint64(64 - bits)
        self._mask = (1 << bits) - 1
        self._table_h = np.zeros(1 << bits, dtype=np.uint64)
        self._table_id = np.zeros(1 << bits, dtype=np.int64)  # 0 = empty slot / [UNK]
        self._max_probe = 0
        slots = (h >> self._shift).astype(np.int64)
        for i, (slot, hv) in enumerate(zip(slots.tolist(), h.tolist())):
            p = 0
            while self._table_id[(slot + p) & self._mask] != 0:
                if self._table_h[(slot + p) & self._mask] == hv:
                    break  # a duplicate vocabulary entry: keep the first id
                p += 1
            j = (slot + p) & self._mask
            if self._table_id[j] == 0:
                self._table_h[j] = hv
                self._table_id[j] = i + 1
            self._max_probe = max(self._max_probe, p)

    def lookup(self, h: np.ndarray) -> np.ndarray:
        slot = (h >> self._shift).astype(np.int64)
        # first probe over all tokens without index lists (most tokens end here: load <= 1/4)
        tid = self._table_id[slot]
        hit = self._table_h[slot] == h
        ids = np.where(hit, tid, 0)
        todo = np.nonzero(~hit & (tid > 0))[0]
        for p in range(1, self._max_probe + 1):
            if todo.size == 0:
                break
            j = (slot[todo] + p) & self._mask
            tid = self._table_id[j]
            hit = (self._table_h[j] == h[todo]) & (tid > 0)
            ids[todo[hit]] = tid[hit]
            todo = todo[~hit & (tid > 0)]  # continue only past occupied, non-matching slots
            if todo.size == 0:
                break
        return ids

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [T], offsets [n]) for embedding_bag; [UNK] tokens are dropped."""
        h, doc, _, _, _ = word_tokens(texts)
        ids = self.lookup(h)
        keep = ids > 0
        ids, doc = ids[keep], doc[keep]
        offsets = np.searchsorted(doc, np.arange(len(texts)), side="left")
        return ids, offsets

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        ids, offsets = self.encode_flat(texts)
        bounds = list(offsets) + [ids.size]
        return [ids[bounds[i] : bounds[i + 1]].tolist() for i in range(len(texts))]


def english_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)
