"""Models: plain nn.Modules (XGLM decoder, XLM-R encoder), presets, parameter/FLOP counts, building from weights.

    from xlbtm.models import ModelArgs, build_model, get_preset, num_params, flops_per_token

No distributed code lives here: tensor parallel / FSDP are applied from outside by module name
(`model.layers[i].self_attn.{q,k,v,out}_proj`, `.fc1`, `.fc2`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlbtm.models.config import ModelArgs
from xlbtm.models.presets import PRESETS, get_preset, preset_names

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "ModelArgs",
    "PRESETS",
    "get_preset",
    "preset_names",
    "build_model",
    "num_params",
    "flops_per_token",
    "matmul_params",
]


def build_model(args: ModelArgs) -> nn.Module:
    """A freshly initialised model for `args` (build under `torch.device("meta")` and call
    `model.init_weights()` after `to_empty()` to initialise big models without host memory)."""
    if args.arch == "xglm":
        from xlbtm.models.xglm import XGLM

        return XGLM(args)
    if args.arch == "xlmr":
        from xlbtm.models.xlmr import XLMR

        return XLMR(args)
    raise ValueError(f"unknown arch {args.arch!r}")


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Trainable parameters, each shared (tied) tensor counted once. `exclude_embeddings` drops the
    token and position tables (XGLM's sinusoidal positions are a buffer, never counted)."""
    seen, total = set(), 0
    skip = set()
    if exclude_embeddings:
        for name in ("embed_tokens", "embed_positions", "token_type_embed"):
            mod = getattr(model, name, None)
            if mod is not None and hasattr(mod, "weight"):
                skip.add(id(mod.weight))
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def matmul_params(args: ModelArgs) -> int:
    """Weights that take part in a matmul for every token: per layer q,k,v,out (4 d^2) and fc1, fc2
    (2 d f); the LM-head projection (V d, tied to the embedding but still a matmul) and, for XLM-R,
    the head's dense layer (d^2). Biases, LayerNorms and embedding lookups are negligible / not matmuls."""
    d, f, L, V = args.d_model, args.ffn_dim, args.n_layers, args.vocab_size
    n = L * (4 * d * d + 2 * d * f) + V * d
    if args.arch == "xlmr":
        n += d * d
    return n


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) = 6 N + 12 L d T.

    N = matmul_params(args) (includes the LM-head matmul). The attention term counts QK^T and
    attention-weighted V (2 matmuls x 2 FLOPs x T x d per layer, x3 for fwd+bwd) over the full
    T x T score matrix, as in PaLM's MFU accounting (the causal mask is not discounted).
    """
    return 6.0 * matmul_params(args) + 12.0 * args.n_layers * args.d_model * seq_len
