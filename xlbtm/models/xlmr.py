"""XLM-R: post-LayerNorm bidirectional encoder with learned positions and a masked-LM head.

Matches `transformers.XLMRobertaForMaskedLM` and fairseq's `roberta` numerically. Positions come from
the tokens like fairseq's make_positions / HF's create_position_ids_from_input_ids:
`cumsum(tokens != pad) * (tokens != pad) + pad_id`, so pads sit at row pad_id and real tokens start at 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlbtm.models.attention import Attention, make_attn_mask
from xlbtm.models.config import ModelArgs
from xlbtm.models.dropout import dropout


class EncoderBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int = 0):
        super().__init__()
        d = args.d_model
        self.site = 1 + 4 * layer_id  # its dropout sites: site .. site + 3 (xlbtm.models.dropout)
        self.dropout = args.dropout
        self.activation_dropout = args.activation_dropout
        self.self_attn = Attention(d, args.n_heads, args.attention_dropout, causal=False, site=self.site + 3)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=args.layer_norm_eps)
        self.fc1 = nn.Linear(d, args.ffn_dim)
        self.fc2 = nn.Linear(args.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=args.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_attn(x, attn_mask)
        x = self.self_attn_layer_norm(x + dropout(h, self.dropout, self.training, self.site))
        h = F.gelu(self.fc1(x))
        h = self.fc2(dropout(h, self.activation_dropout, self.training, self.site + 1))
        return self.final_layer_norm(x + dropout(h, self.dropout, self.training, self.site + 2))


class LMHead(nn.Module):
    """dense + GELU + LayerNorm, then the tied decoder (embed_tokens) plus a vocab bias."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.d_model, args.d_model)
        self.layer_norm = nn.LayerNorm(args.d_model, eps=args.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(args.vocab_size))

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """What the tied decoder projects: LayerNorm(GELU(dense(h)))."""
        return self.layer_norm(F.gelu(self.dense(h)))

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), weight, self.bias)


class XLMR(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        assert args.arch == "xlmr", args.arch
        self.args = args
        d = args.d_model
        self.embed_tokens = nn.Embedding(args.vocab_size, d, padding_idx=args.pad_id)
        self.embed_positions = nn.Embedding(args.max_positions + args.pad_id + 1, d, padding_idx=args.pad_id)
        # HF keeps a 1-row token-type table; always type 0, so it is a constant added to every token.
        self.token_type_embed = nn.Embedding(args.type_vocab_size, d) if args.type_vocab_size > 0 else None
        self.emb_layer_norm = nn.LayerNorm(d, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderBlock(args, i) for i in range(args.n_layers))
        self.lm_head = LMHead(args)
        self.init_weights()

    def init_buffers(self) -> None:
        """No derived buffers (positions are learned); present so callers can treat both models alike."""

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT-style init: N(0, init_std) for linears and embeddings, zero biases, pad rows zero."""
        a = self.args
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=a.init_std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=a.init_std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.lm_head.bias)
        if self.token_type_embed is not None:
            # fairseq XLM-R has no token types; a zero row keeps the two formats exactly equivalent
            nn.init.zeros_(self.token_type_embed.weight)

    def positions(self, tokens: torch.Tensor) -> torch.Tensor:
        real = tokens.ne(self.args.pad_id).int()
        return (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.args.pad_id

    def forward_hidden(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encoder output [B, T, D] (before the LM head). `positions` [B, T]: explicit rows of the position
        table (HF's position_ids), e.g. TLM's restarting at a pair's second side; default from the tokens."""
        T = tokens.shape[1]
        if T > self.args.max_positions:
            raise ValueError(f"sequence length {T} exceeds max_positions={self.args.max_positions}")
        x = self.embed_tokens(tokens)
        if self.token_type_embed is not None:
            x = x + self.token_type_embed.weight[0]
        x = x + self.embed_positions(self.positions(tokens) if positions is None else positions)
        x = dropout(self.emb_layer_norm(x), self.args.dropout, self.training, site=0)
        mask = make_attn_mask(padding_mask, causal=False)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the LM head's decoder: the tied embedding and the vocab bias. A loss component
        (`xlbtm.models.loss.LossFn`) takes them with `forward(..., hidden=True)`'s states."""
        return self.embed_tokens.weight, self.lm_head.bias

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """MLM logits of encoder states (`forward_hidden`'s): the LM head's transform, then its decoder."""
        return self.lm_head(h, self.embed_tokens.weight)

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        *,
        hidden: bool = False,
    ) -> torch.Tensor:
        """tokens [B, T] long, padding_mask [B, T] bool (True = pad) or None -> MLM logits [B, T, V].
        With `hidden`: the states the decoder projects instead, [B, T, D] (the LM head's transform of the
        encoder output; `output_projection()` gives the decoder's weight and bias), for a loss that never
        holds the logits (`xlbtm.models.loss.model_loss`). `positions`: see forward_hidden."""
        h = self.forward_hidden(tokens, padding_mask, positions)
        if hidden:
            return self.lm_head.transform(h)
        return self.output(h)
