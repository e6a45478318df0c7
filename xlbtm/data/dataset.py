"""Samples from a binarized token stream: packed CLM blocks, MLM-masked blocks, TLM-masked packed translation
pairs, the MLM+TLM mix, deterministic order.

The data position of a run is ONE integer: the global sample index `g` (samples consumed so far by all
data-parallel ranks together). Sample `g` is item `perm_e[g % N]` of epoch `e = g // N`, where `perm_e` is a
permutation seeded by (seed, e). Rank r of a DP group of size D takes the global indices
`g + (micro * D + r) * B + j`, so a checkpoint resumed with another D (same global batch) continues with
exactly the samples an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xlbtm.errors import InputError


class TokenStream:
    """A `.bin` (uint32 tokens) + `.idx` (int64 document offsets) pair, memory-mapped."""

    def __init__(self, bin_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.bin_path = Path(bin_path)
        self.idx_path = Path(idx_path) if idx_path else self.bin_path.with_suffix(".idx")
        if not self.bin_path.is_file():
            raise InputError("token stream not found (binarize this split first)", self.bin_path)
        n = self.bin_path.stat().st_size // 4
        # np.memmap refuses empty files; an empty cluster is a valid (if useless) stream
        self.tokens = np.memmap(self.bin_path, dtype=np.uint32, mode="r") if n else np.zeros(0, np.uint32)
        self.offsets = np.fromfile(self.idx_path, dtype=np.int64) if self.idx_path.is_file() else None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_docs(self) -> int:
        return 0 if self.offsets is None else len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        assert self.offsets is not None, "a stream without its .idx has no documents"
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


class CLMDataset:
    """Packed blocks of `tokens_per_sample + 1` tokens (inputs = block[:-1], targets = block[1:]).

    Consecutive blocks overlap by one token, so every token of the stream is predicted exactly once.
    """

    def __init__(self, stream: TokenStream, tokens_per_sample: int):
        self.stream, self.tps = stream, int(tokens_per_sample)
        self.n = stream_samples("clm", len(stream), self.tps)

    def __len__(self) -> int:
        return self.n

    def get(self, i: int, global_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        block = np.asarray(self.stream.tokens[i * self.tps : i * self.tps + self.tps + 1], dtype=np.int64)
        return block[:-1], block[1:]


def stream_samples(objective: str, num_tokens: int, tokens_per_sample: int) -> int:
    """Training samples a monolingual stream of `num_tokens` tokens holds: CLM blocks of `tokens_per_sample + 1`
    tokens overlapping by one, MLM bodies of `tokens_per_sample - 1` (mlm+tlm: its MLM stream). The one
    formula the datasets and train_experts' check of empty clusters share."""
    if objective == "clm":
        return max(0, (int(num_tokens) - 1) // int(tokens_per_sample))
    body = int(tokens_per_sample) - 1
    return int(num_tokens) // body if body > 0 else 0


def corpus_tokens_per_sample(objective: str, tokens_per_sample: int) -> int:
    """Corpus tokens one training sample of the monolingual stream consumes: a CLM block advances the stream by
    `tokens_per_sample` (blocks overlap by one target token), an MLM sample is `<s>` + `tokens_per_sample - 1`
    stream tokens. What "training tokens" means when two runs are compared at equal compute. (TLM samples are
    translation pairs, not stream slices: refused rather than miscounted.)"""
    if objective == "clm":
        return int(tokens_per_sample)
    if objective == "mlm":
        return int(tokens_per_sample) - 1
    raise ValueError(f"no stream token count for objective {objective!r}")


class MLMDataset:
    """Blocks of `tokens_per_sample` tokens (`<s>` + stream slice) with BERT masking: 15% of the non-special
    positions are targets; of those 80% become `<mask>`, 10% a random token, 10% stay. The mask of a sample
    depends only on (seed, global sample index), so it is reproducible across resumes and DP degrees."""

    IGNORE = -100

    def __init__(
        self,
        stream: TokenStream,
        tokens_per_sample: int,
        *,
        vocab_size: int,
        mask_id: int,
        bos_id: int = 0,
        special_ids=(0, 1, 2, 3),
        seed: int = 0,
        mask_prob: float = 0.15,
    ):
        if mask_id is None:
            raise InputError("the tokenizer has no <mask> token; it cannot train a masked LM", stream.bin_path)
        self.stream, self.tps = stream, int(tokens_per_sample)
        self.body = self.tps - 1
        self.n = stream_samples("mlm", len(stream), self.tps)
        self.vocab_size, self.mask_id, self.bos_id = vocab_size, mask_id, bos_id
        self.special = np.asarray(sorted(set(special_ids) | {mask_id}), dtype=np.int64)
        self.seed, self.mask_prob = seed, mask_prob

    def __len__(self) -> int:
        return self.n

    def get(self, i: int, global_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        body = np.asarray(self.stream.tokens[i * self.body : (i + 1) * self.body], dtype=np.int64)
        tokens = np.concatenate([[self.bos_id], body])
        rng = np.random.default_rng([self.seed, 0x4D4C4D, global_index])
        return bert_mask(tokens, ~np.isin(tokens, self.special), rng, self.mask_prob, self.mask_id, self.vocab_size)


def bert_mask(
    tokens: np.ndarray, cand: np.ndarray, rng, mask_prob: float, mask_id: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of the `cand` positions of `tokens`: each a target with probability `mask_prob` (at least
    one per sample, so the loss is defined); of the targets 80% become `mask_id`, 10% a random token, 10%
    stay. Returns (inputs, targets), targets IGNORE where not chosen. MLM and TLM samples mask alike."""
    chosen = cand & (rng.random(len(tokens)) < mask_prob)
    if cand.any() and not chosen.any():  # at least one target per sample keeps the loss defined
        chosen[rng.choice(np.flatnonzero(cand))] = True
    targets = np.where(chosen, tokens, MLMDataset.IGNORE)
    r = rng.random(len(tokens))
    inputs = tokens.copy()
    inputs[chosen & (r < 0.8)] = mask_id
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand_pos] = rng.integers(4, vocab_size, size=int(rand_pos.sum()))
    return inputs, targets


def default_positions(length: int, pad_id: int) -> np.ndarray:
    """The positions XLM-R gives an unpadded sample (fairseq's make_positions): pad_id + 1, pad_id + 2, ..."""
    return np.arange(pad_id + 1, pad_id + 1 + length, dtype=np.int64)


class PairStream:
    """One split of binarized parallel data (`xlbtm.formats.pairs`), all of it or one cluster's: pair i is (src
    side i, tgt side i)."""

    def __init__(self, pairs_dir: str | os.PathLike, split: str, cluster: int | None = None):
        from xlbtm.formats.pairs import side_paths

        self.src = TokenStream(*side_paths(pairs_dir, split, "src", cluster))
        self.tgt = TokenStream(*side_paths(pairs_dir, split, "tgt", cluster))
        if self.src.offsets is None or self.tgt.offsets is None or self.src.num_docs != self.tgt.num_docs:
            raise InputError(
                "the src and tgt sides of this split do not hold the same number of pairs; binarize it again",
                self.src.bin_path.parent,
            )

    def __len__(self) -> int:
        return self.src.num_docs

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src.doc(i), self.tgt.doc(i)


class TLMDataset:
    """Translation language modeling (XLM, Conneau & Lample 2019) samples of `tokens_per_sample` tokens.

    Each pair is laid out as XLM-R pairs are, `<s> src </s> </s> tgt </s>`, with positions restarting at
    the second side (`</s> tgt </s>` counts from 0 again, as in XLM's TLM), both offset by pad_id + 1 like
    every XLM-R position. Consecutive pairs are packed greedily into one sample while they fit (the whole
    sample attends to all of it, as RoBERTa's packed documents do; each pair's positions restart per side),
    and the rest of the sample is padding (token and position pad_id, never a target; the trainer masks it
    out of attention). A pair longer than a sample is truncated: each side keeps a prefix, the sample's room
    shared in proportion to the sides' lengths, at least one token each. Masks: MLMDataset's (`bert_mask`,
    same probability, 80/10/10) on the tokens of BOTH sides, never on `<s>`, `</s>` or padding, from a rng
    seeded by (seed, global sample index) only, so resumes and DP degrees see the same masks. Samples
    are (inputs, targets, positions)."""

    SPECIALS = 4  # <s> </s> </s> </s> per pair

    def __init__(
        self,
        pairs: PairStream,
        tokens_per_sample: int,
        *,
        vocab_size: int,
        mask_id: int,
        bos_id: int = 0,
        pad_id: int = 1,
        eos_id: int = 2,
        special_ids=(0, 1, 2, 3),
        seed: int = 0,
        mask_prob: float = 0.15,
    ):
        if mask_id is None:
            raise InputError("the tokenizer has no <mask> token; it cannot train a masked LM", pairs.src.bin_path)
        self.pairs, self.tps = pairs, int(tokens_per_sample)
        self.budget = self.tps - self.SPECIALS  # room for the two sides of one pair
        if self.budget < 2:
            from xlbtm.errors import UsageError

            raise UsageError(
                f"--tokens-per-sample {self.tps} is too small for TLM: a pair needs at least {self.SPECIALS + 2} tokens"
            )
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.bos_id, self.pad_id, self.eos_id = bos_id, pad_id, eos_id
        self.special = np.asarray(sorted(set(special_ids) | {mask_id, bos_id, pad_id, eos_id}), dtype=np.int64)
        self.seed, self.mask_prob = seed, mask_prob
        assert pairs.src.offsets is not None and pairs.tgt.offsets is not None  # PairStream checks both
        ls = np.diff(pairs.src.offsets) if len(pairs) else np.zeros(0, np.int64)
        lt = np.diff(pairs.tgt.offsets) if len(pairs) else np.zeros(0, np.int64)
        cost = (np.minimum(ls + lt, self.budget) + self.SPECIALS).tolist()
        starts, fill = [], self.tps
        for i, c in enumerate(cost):  # greedy, in stream order: sample k holds pairs starts[k]..starts[k+1]-1
            if fill + c > self.tps:
                starts.append(i)
                fill = 0
            fill += c
        self.starts = np.asarray(starts + [len(cost)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def sides(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair j's two sides as they go into a sample (truncated to fit one sample if need be)."""
        src, tgt = self.pairs.pair(j)
        ls, lt = len(src), len(tgt)
        if ls + lt > self.budget:
            ks = min(ls, max(1, min(self.budget - 1, round(self.budget * ls / (ls + lt)))))
            kt = min(lt, self.budget - ks)
            ks = min(ls, self.budget - kt)
            src, tgt = src[:ks], tgt[:kt]
        return src, tgt

    def get(self, i: int, global_index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tokens = np.full(self.tps, self.pad_id, dtype=np.int64)
        positions = np.full(self.tps, self.pad_id, dtype=np.int64)
        at, first = 0, self.pad_id + 1
        for j in range(int(self.starts[i]), int(self.starts[i + 1])):
            src, tgt = self.sides(j)
            for part in ([self.bos_id], src, [self.eos_id]), ([self.eos_id], tgt, [self.eos_id]):
                seq = np.concatenate([np.asarray(p, dtype=np.int64) for p in part])
                tokens[at : at + len(seq)] = seq
                positions[at : at + len(seq)] = np.arange(first, first + len(seq))
                at += len(seq)
        rng = np.random.default_rng([self.seed, 0x544C4D, global_index])
        inputs, targets = bert_mask(
            tokens, ~np.isin(tokens, self.special), rng, self.mask_prob, self.mask_id, self.vocab_size
        )
        return inputs, targets, positions


class MLMTLMDataset:
    """`--objective mlm+tlm`: sample g is a TLM sample with probability `tlm_ratio`, else an MLM one.

    The choice is a pure function of (seed, g) (`is_tlm`), so a resumed run draws the same mix. MLM samples
    keep the run's epoch (this dataset's length and items are the MLM stream's, so the MLM share sees what
    an MLM run would at those indices); TLM samples walk their own per-epoch permutation of the packed pairs
    at the same global index. Every sample is (inputs, targets, positions): MLM ones get XLM-R's default
    positions, so the two kinds stack into one batch."""

    def __init__(self, mlm: MLMDataset, tlm: TLMDataset, tlm_ratio: float, seed: int):
        if not 0.0 <= tlm_ratio <= 1.0:
            from xlbtm.errors import UsageError

            raise UsageError(f"--tlm-ratio must be in [0, 1], got {tlm_ratio}")
        if len(tlm) == 0:
            raise InputError("no translation pairs to mix in (--objective mlm+tlm)", tlm.pairs.src.bin_path.parent)
        self.mlm, self.tlm, self.ratio, self.seed = mlm, tlm, float(tlm_ratio), seed
        self.tlm_sampler = Sampler(len(tlm), seed + 1)  # its own permutation of the packed pairs

    def __len__(self) -> int:
        return len(self.mlm)

    def is_tlm(self, global_index: int) -> bool:
        return bool(np.random.default_rng([self.seed, 0x4D4958, global_index]).random() < self.ratio)

    def get(self, i: int, global_index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.is_tlm(global_index):
            return self.tlm.get(self.tlm_sampler.item(global_index), global_index)
        x, y = self.mlm.get(i, global_index)
        return x, y, default_positions(len(x), self.tlm.pad_id)


class Sampler:
    """Global sample index -> dataset item, shuffled per epoch with a permutation seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ValueError("empty dataset")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch = -1
        self._perm: np.ndarray | None = None  # the permutation of epoch self._epoch

    def item(self, g: int) -> int:
        if not self.shuffle:
            return g % self.n
        e = g // self.n
        if e != self._epoch:
            self._perm = np.random.default_rng([self.seed, e]).permutation(self.n)
            self._epoch = e
        assert self._perm is not None
        return int(self._perm[g % self.n])

    def epoch(self, g: int) -> int:
        return g // self.n


def rank_indices(position: int, micro: int, dp_rank: int, dp_size: int, batch_size: int) -> list[int]:
    """The global sample indices rank `dp_rank` uses in micro-step `micro` of the step starting at `position`."""
    start = position + (micro * dp_size + dp_rank) * batch_size
    return list(range(start, start + batch_size))


def collate(dataset, sampler: Sampler, indices: list[int]):
    """Stack the samples of `indices` into (inputs, targets[, positions]) LongTensors [B, T]."""
    import torch

    fields = zip(*(dataset.get(sampler.item(g), g) for g in indices))
    return tuple(torch.from_numpy(np.stack(f)) for f in fields)
