"""XGLM: pre-LayerNorm causal decoder with sinusoidal positions and a tied output projection.

Matches `transformers.XGLMForCausalLM` (and the fairseq/metaseq `transformer_lm` it was converted
from) numerically. Positions are `arange(T) + 2` for every row, exactly as transformers computes them
when no position_ids are passed; with right padding this equals fairseq's make_positions on real tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xlbtm.models.attention import Attention, KVCache, LayerKV, make_attn_mask, sinusoidal_table
from xlbtm.models.config import ModelArgs
from xlbtm.models.dropout import dropout

POS_OFFSET = 2  # fairseq: positions start at padding_idx + 1


class DecoderBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int = 0):
        super().__init__()
        d = args.d_model
        self.site = 1 + 4 * layer_id  # its dropout sites: site .. site + 3 (xlbtm.models.dropout)
        self.dropout = args.dropout
        self.activation_dropout = args.activation_dropout
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=args.layer_norm_eps)
        self.self_attn = Attention(d, args.n_heads, args.attention_dropout, causal=True, site=self.site + 3)
        self.final_layer_norm = nn.LayerNorm(d, eps=args.layer_norm_eps)
        self.fc1 = nn.Linear(d, args.ffn_dim)
        self.fc2 = nn.Linear(args.ffn_dim, d)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv: LayerKV | None = None
    ) -> torch.Tensor:
        # kv only when decoding: tensor parallel's input hooks expect exactly (x, attn_mask) in training
        h = (
            self.self_attn(self.self_attn_layer_norm(x), attn_mask)
            if kv is None
            else self.self_attn(self.self_attn_layer_norm(x), attn_mask, kv)
        )
        x = x + dropout(h, self.dropout, self.training, self.site)
        h = F.gelu(self.fc1(self.final_layer_norm(x)))
        h = self.fc2(dropout(h, self.activation_dropout, self.training, self.site + 1))
        return x + dropout(h, self.dropout, self.training, self.site + 2)


class XGLM(nn.Module):
    embed_positions: torch.Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, args: ModelArgs):
        super().__init__()
        assert args.arch == "xglm", args.arch
        self.args = args
        self.embed_scale = math.sqrt(args.d_model) if args.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(args.vocab_size, args.d_model, padding_idx=args.pad_id)
        # Deterministic, not trained, not saved: recomputed by init_weights() (meta-device friendly).
        self.register_buffer(
            "embed_positions", torch.empty(args.max_positions + POS_OFFSET, args.d_model), persistent=False
        )
        self.layers = nn.ModuleList(DecoderBlock(args, i) for i in range(args.n_layers))
        self.layer_norm = nn.LayerNorm(args.d_model, eps=args.layer_norm_eps)
        self.init_weights()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """(Re)compute the sinusoidal table, e.g. after to_empty() or loading with assign=True."""
        a = self.args
        device = self.embed_tokens.weight.device
        if device.type == "meta" or self.embed_positions.device.type == "meta":
            self.embed_positions = torch.empty_like(self.embed_positions, device=device)
        self.embed_positions.copy_(sinusoidal_table(a.max_positions + POS_OFFSET, a.d_model, a.pad_id))

    @torch.no_grad()
    def init_weights(self) -> None:
        """fairseq-style init: N(0, d^-1/2) embeddings (scaled by sqrt(d) in forward), N(0, init_std) linears."""
        a = self.args
        self.init_buffers()
        nn.init.normal_(self.embed_tokens.weight, std=a.d_model**-0.5 if a.scale_embedding else a.init_std)
        self.embed_tokens.weight[a.pad_id].zero_()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=a.init_std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def new_cache(self, batch_size: int | None = None) -> KVCache:
        """An empty KV cache for incremental decoding: `forward_hidden(tokens, pad, cache=c)` feeds the next
        tokens of every row (inference only); with `batch_size`, `rows=` may feed some rows only."""
        return KVCache(len(self.layers), batch_size)

    def forward_hidden(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, D] (after the last LayerNorm), before the output projection.

        With `cache`, `tokens` continue the rows fed so far (their keys / values are kept in the cache);
        positions count each row's real tokens, so a left-padded row is positioned like an unpadded one.
        `rows` (long [R]): `tokens` [R, T] continue those rows of the cache only."""
        if cache is not None:
            return self._forward_cached(tokens, padding_mask, cache, rows)
        B, T = tokens.shape
        if T > self.args.max_positions:
            raise ValueError(f"sequence length {T} exceeds max_positions={self.args.max_positions}")
        x = self.embed_tokens(tokens) * self.embed_scale
        x = x + self.embed_positions[POS_OFFSET : POS_OFFSET + T].to(x.dtype)
        x = dropout(x, self.args.dropout, self.training, site=0)
        mask = make_attn_mask(padding_mask, causal=True)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x)

    def _forward_cached(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor | None, cache: KVCache, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        if padding_mask is None:
            padding_mask = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        positions, mask = cache.step_mask(padding_mask, rows, self.args.max_positions)
        x = self.embed_tokens(tokens) * self.embed_scale
        x = x + self.embed_positions[POS_OFFSET + positions].to(x.dtype)
        x = dropout(x, self.args.dropout, self.training, site=0)
        for layer, kv in zip(self.layers, cache.layers):
            x = layer(x, mask, kv)
        return self.layer_norm(x)

    def output_projection(self) -> tuple[torch.Tensor, None]:
        """(weight, bias) of the output projection: the tied embedding, no bias. A loss component
        (`xlbtm.models.loss.LossFn`) takes them with `forward(..., hidden=True)`'s states."""
        return self.embed_tokens.weight, None

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Tied output projection: logits = h @ embed_tokens.weight^T."""
        return F.linear(h, self.embed_tokens.weight)

    def forward(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None, *, hidden: bool = False
    ) -> torch.Tensor:
        """tokens [B, T] long, padding_mask [B, T] bool (True = pad) or None -> logits [B, T, V].
        With `hidden`: the final hidden states [B, T, D] instead (what `output_projection()` projects), for
        a loss that never holds the logits (`xlbtm.models.loss.model_loss`)."""
        h = self.forward_hidden(tokens, padding_mask)
        return h if hidden else self.output(h)
