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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; attn_mask bool [B, 1, T, T] (True = may attend) or None (plain causal / full)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        y = sdpa(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            # with an explicit mask the causal part is already inside it
            is_causal=self.causal and attn_mask is None,
            site=self.site,
        )
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.out_proj(y)


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
