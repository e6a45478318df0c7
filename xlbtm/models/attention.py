"""Multi-head self-attention through F.scaled_dot_product_attention, shared by XGLM and XLM-R.

Tensor parallel is applied from outside by module name (colwise q/k/v, rowwise out_proj), so heads
are recovered with `view(B, T, -1, head_dim)`: a rank holding a column shard just sees fewer heads.
"""

from __future__ import annotations

import torch
from torch import nn

from xlbtm.models.dropout import attention as sdpa


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = False, site: int = 0):
        super().__init__()
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.causal = causal
        self.site = site  # dropout site (xlbtm.models.dropout): fixed per layer
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv: LayerKV | None = None
    ) -> torch.Tensor:
        """x [B, T, D]; attn_mask bool [B, 1, T, T] (True = may attend) or None (plain causal / full).
        With `kv` (incremental decoding): the new keys / values are appended to the cached ones and the
        queries attend over both; attn_mask is then [B, 1, T, S + T] and must be given."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if kv is not None:
            k, v = kv.extend(k, v)
        y = sdpa(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            # with an explicit mask the causal part is already inside it
            is_causal=self.causal and attn_mask is None,
            site=self.site,
        )
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.out_proj(y)


class LayerKV:
    """One layer's cached keys and values [B, H, S, hd] (S = columns fed so far)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None  # set per step by KVCache.step_mask: the rows being fed
        self.batch = 0

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys / values; returns what the new queries attend over (their rows' cache + new)."""
        if self.rows is None:
            if self.k is not None:
                assert self.v is not None  # k and v are always set together
                k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
            self.k, self.v = k, v
            return k, v
        B, (_, H, T, hd) = self.batch, k.shape
        if self.k is None:
            self.k = self.v = k.new_zeros((B, H, 0, hd))
        assert self.v is not None  # k and v are always set together
        k_all, v_all = torch.cat([self.k[self.rows], k], dim=2), torch.cat([self.v[self.rows], v], dim=2)
        new_k, new_v = k.new_zeros((B, H, T, hd)), v.new_zeros((B, H, T, hd))
        new_k[self.rows], new_v[self.rows] = k, v  # the other rows get masked padding columns
        self.k, self.v = torch.cat([self.k, new_k], dim=2), torch.cat([self.v, new_v], dim=2)
        return k_all, v_all


class KVCache:
    """Keys / values of every layer for incremental decoding with a causal model (`XGLM.forward_hidden(cache=)`).

    `pad` [B, S] marks the cached columns that are padding (never attended to); `lengths` [B] counts each
    row's real tokens so far, which gives the next token its position (left-padded rows start at position 0
    like unpadded ones). Feeding a sequence in several chunks gives the same states as feeding it at once.
    A step may feed a subset of the rows (`rows`, with `batch_size` given): the others get padding columns, so
    each row's keys stay in its own order and an expert can skip the rows it is not routed.
    """

    def __init__(self, n_layers: int, batch_size: int | None = None):
        self.layers = [LayerKV() for _ in range(n_layers)]
        self.batch_size = batch_size
        self.pad: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0 if self.pad is None else int(self.pad.shape[1])

    def step_mask(
        self, new_pad: torch.Tensor, rows: torch.Tensor | None = None, max_positions: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [R, T] of the new tokens, attention mask [R, 1, T, S + T]) for `new_pad` [R, T] (True =
        pad) of `rows` (default: every row, R = B); records the new columns as cached. Every query may attend
        to itself (no all-masked rows)."""
        R, T = new_pad.shape
        dev = new_pad.device
        if rows is None:
            B = R
        elif self.batch_size is None:
            raise ValueError("feeding a subset of rows needs KVCache(batch_size=B)")
        else:
            B = self.batch_size
        if self.pad is None:
            self.pad = torch.zeros(B, 0, dtype=torch.bool, device=dev)
            self.lengths = torch.zeros(B, dtype=torch.long, device=dev)
        assert self.lengths is not None  # pad and lengths are always set together
        sel = slice(None) if rows is None else rows
        S = self.seq_len
        real = (~new_pad).long()
        lengths = self.lengths[sel]
        if max_positions is not None and int((lengths + real.sum(1)).max()) > max_positions:
            raise ValueError(f"sequence length exceeds max_positions={max_positions}")
        positions = lengths[:, None] + torch.cumsum(real, 1) - real
        key_pad = torch.cat([self.pad[sel], new_pad], dim=1)
        q_idx = torch.arange(T, device=dev)[:, None] + S
        k_idx = torch.arange(S + T, device=dev)[None, :]
        keep = (~key_pad)[:, None, None, :] & (k_idx <= q_idx)[None, None]
        keep = keep | (k_idx == q_idx)[None, None]
        if rows is None:
            self.pad, self.lengths = key_pad, self.lengths + real.sum(1)
        else:
            col = torch.ones((B, T), dtype=torch.bool, device=dev)
            col[rows] = new_pad
            self.pad = torch.cat([self.pad, col], dim=1)
            self.lengths = self.lengths.clone()
            self.lengths[rows] += real.sum(1)
        for layer in self.layers:
            layer.rows, layer.batch = rows, B
        return positions, keep


def make_attn_mask(padding_mask: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """Boolean SDPA mask [B, 1, T, T] (True = attend) from a [B, T] padding mask (True = pad).

    Returns None when there is no padding so SDPA can take its fused causal/full path. Every query
    may always attend to itself: a pad query with nothing else visible (left padding) would
    otherwise produce NaN that leaks into gradients; real tokens never depend on pad positions.
    """
    if padding_mask is None:
        return None
    B, T = padding_mask.shape
    keep = (~padding_mask)[:, None, None, :].expand(B, 1, T, T)
    eye = torch.eye(T, dtype=torch.bool, device=padding_mask.device)
    if causal:
        tril = torch.ones(T, T, dtype=torch.bool, device=padding_mask.device).tril()
        keep = keep & tril
    return keep | eye


def sinusoidal_table(num_embeddings: int, dim: int, padding_idx: int | None) -> torch.Tensor:
    """fairseq/tensor2tensor sinusoids: [sin | cos] halves, row `padding_idx` zeroed (same as HF XGLM)."""
    import math

    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.int64).float() * -scale)
    ang = torch.arange(num_embeddings, dtype=torch.int64).float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1).view(num_embeddings, -1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros(num_embeddings, 1)], dim=1)
    if padding_idx is not None:
        emb[padding_idx, :] = 0
    return emb
