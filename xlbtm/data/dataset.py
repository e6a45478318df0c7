"""Samples from a binarized token stream: packed CLM blocks, MLM-masked blocks, deterministic order.

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
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


class CLMDataset:
    """Packed blocks of `tokens_per_sample + 1` tokens (inputs = block[:-1], targets = block[1:]).

    Consecutive blocks overlap by one token, so every token of the stream is predicted exactly once.
    """

    def __init__(self, stream: TokenStream, tokens_per_sample: int):
        self.stream, self.tps = stream, int(tokens_per_sample)
        self.n = max(0, (len(stream) - 1) // self.tps)

    def __len__(self) -> int:
        return self.n

    def get(self, i: int, global_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        block = np.asarray(self.stream.tokens[i * self.tps: i * self.tps + self.tps + 1], dtype=np.int64)
        return block[:-1], block[1:]


class MLMDataset:
    """Blocks of `tokens_per_sample` tokens (`<s>` + stream slice) with BERT masking: 15% of the non-special
    positions are targets; of those 80% become `<mask>`, 10% a random token, 10% stay. The mask of a sample
    depends only on (seed, global sample index), so it is reproducible across resumes and DP degrees."""

    IGNORE = -100

    def __init__(self, stream: TokenStream, tokens_per_sample: int, *, vocab_size: int, mask_id: int,
                 bos_id: int = 0, special_ids=(0, 1, 2, 3), seed: int = 0, mask_prob: float = 0.15):
        if mask_id is None:
            raise InputError("the tokenizer has no <mask> token; it cannot train a masked LM", stream.bin_path)
        self.stream, self.tps = stream, int(tokens_per_sample)
        self.body = self.tps - 1
        self.n = len(stream) // self.body if self.body > 0 else 0
        self.vocab_size, self.mask_id, self.bos_id = vocab_size, mask_id, bos_id
        self.special = np.asarray(sorted(set(special_ids) | {mask_id}), dtype=np.int64)
        self.seed, self.mask_prob = seed, mask_prob

    def __len__(self) -> int:
        return self.n

    def get(self, i: int, global_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        body = np.asarray(self.stream.tokens[i * self.body:(i + 1) * self.body], dtype=np.int64)
        tokens = np.concatenate([[self.bos_id], body])
        rng = np.random.default_rng([self.seed, 0x4D4C4D, global_index])
        cand = ~np.isin(tokens, self.special)
        chosen = cand & (rng.random(len(tokens)) < self.mask_prob)
        if cand.any() and not chosen.any():  # at least one target per sample keeps the loss defined
            chosen[rng.choice(np.flatnonzero(cand))] = True
        targets = np.where(chosen, tokens, self.IGNORE)
        r = rng.random(len(tokens))
        inputs = tokens.copy()
        inputs[chosen & (r < 0.8)] = self.mask_id
        rand_pos = chosen & (r >= 0.8) & (r < 0.9)
        inputs[rand_pos] = rng.integers(4, self.vocab_size, size=int(rand_pos.sum()))
        return inputs, targets


class Sampler:
    """Global sample index -> dataset item, shuffled per epoch with a permutation seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ValueError("empty dataset")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._perm = -1, None

    def item(self, g: int) -> int:
        if not self.shuffle:
            return g % self.n
        e = g // self.n
        if e != self._epoch:
            self._perm = np.random.default_rng([self.seed, e]).permutation(self.n)
            self._epoch = e
        return int(self._perm[g % self.n])

    def epoch(self, g: int) -> int:
        return g // self.n


def rank_indices(position: int, micro: int, dp_rank: int, dp_size: int, batch_size: int) -> list[int]:
    """The global sample indices rank `dp_rank` uses in micro-step `micro` of the step starting at `position`."""
    start = position + (micro * dp_size + dp_rank) * batch_size
    return list(range(start, start + batch_size))


def collate(dataset, sampler: Sampler, indices: list[int]):
    """Stack the samples of `indices` into (inputs, targets) LongTensors [B, T]."""
    import torch

    xs, ys = zip(*(dataset.get(sampler.item(g), g) for g in indices))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
