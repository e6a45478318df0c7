"""ModelArgs: the one typed config both architectures are built from.

Field names follow nanoGPT/torchtitan style; `to_fairseq()` / `from_fairseq()` map them to the
metaseq/fairseq names (decoder_embed_dim, ...) that c-BTM/X-ELM checkpoints carry in their `cfg`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ARCHS = ("xglm", "xlmr")


@dataclass
class ModelArgs:
    arch: str = "xglm"  # "xglm" (causal decoder) | "xlmr" (masked-LM encoder)
    vocab_size: int = 256008
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    ffn_dim: int = 4096
    # Usable token positions. Position tables hold max_positions + 2 rows because, like fairseq,
    # positions start at pad_id + 1 = 2 (rows 0/1 are never used by real tokens).
    max_positions: int = 2048
    dropout: float = 0.1  # embeddings + residual branches
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    pad_id: int = 1
    bos_id: int = 0
    eos_id: int = 2
    layer_norm_eps: float = 1e-5
    scale_embedding: bool = True  # XGLM multiplies token embeddings by sqrt(d_model)
    type_vocab_size: int = 1  # XLM-R token-type table (HF keeps a single row; fairseq has none)
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. source checkpoint)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim", "max_positions"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def causal(self) -> bool:
        return self.arch == "xglm"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelArgs:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelArgs fields {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **overrides) -> ModelArgs:
        return dataclasses.replace(self, **overrides)

    # ---- metaseq / fairseq names ---------------------------------------------------------------
    def to_fairseq(self) -> dict[str, Any]:
        """The model section of a metaseq/fairseq `cfg` (plain dict, loadable with weights_only)."""
        if self.arch == "xglm":
            return {
                "_name": "transformer_lm",
                "arch": "transformer_lm",
                "decoder_embed_dim": self.d_model,
                "decoder_output_dim": self.d_model,
                "decoder_input_dim": self.d_model,
                "decoder_layers": self.n_layers,
                "decoder_attention_heads": self.n_heads,
                "decoder_ffn_embed_dim": self.ffn_dim,
                "max_target_positions": self.max_positions,
                "tokens_per_sample": self.max_positions,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation_dropout": self.activation_dropout,
                "activation_fn": "gelu",
                "no_scale_embedding": not self.scale_embedding,
                "share_decoder_input_output_embed": True,
                "decoder_learned_pos": False,
                "decoder_normalize_before": True,
                "vocab_size": self.vocab_size,
            }
        return {
            "_name": "roberta",
            "arch": "roberta",
            "encoder_embed_dim": self.d_model,
            "encoder_layers": self.n_layers,
            "encoder_attention_heads": self.n_heads,
            "encoder_ffn_embed_dim": self.ffn_dim,
            "max_positions": self.max_positions,
            "tokens_per_sample": self.max_positions,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
            "activation_fn": "gelu",
            "encoder_normalize_before": False,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_fairseq(cls, m: dict[str, Any], vocab_size: int, arch: str) -> ModelArgs:
        """Build from a metaseq/fairseq model cfg (dict or Namespace-as-dict). Missing sizes raise KeyError."""

        def get(*names, default=None):
            for n in names:
                if m.get(n) is not None:
                    return m[n]
            if default is not None:
                return default
            raise KeyError(names[0])

        if arch == "xglm":
            if m.get("decoder_learned_pos"):
                raise ValueError("learned decoder positions are not XGLM (decoder_learned_pos=True)")
            if m.get("decoder_normalize_before") is False:
                raise ValueError("post-LayerNorm decoders are not XGLM (decoder_normalize_before=False)")
            return cls(
                arch="xglm",
                vocab_size=vocab_size,
                d_model=int(get("decoder_embed_dim")),
                n_layers=int(get("decoder_layers")),
                n_heads=int(get("decoder_attention_heads")),
                ffn_dim=int(get("decoder_ffn_embed_dim")),
                max_positions=int(get("max_target_positions", "tokens_per_sample", default=2048)),
                dropout=float(get("dropout", default=0.1)),
                attention_dropout=float(get("attention_dropout", default=0.0)),
                activation_dropout=float(get("activation_dropout", default=0.0)),
                scale_embedding=not bool(m.get("no_scale_embedding", False)),
            )
        return cls(
            arch="xlmr",
            vocab_size=vocab_size,
            d_model=int(get("encoder_embed_dim")),
            n_layers=int(get("encoder_layers")),
            n_heads=int(get("encoder_attention_heads")),
            ffn_dim=int(get("encoder_ffn_embed_dim")),
            max_positions=int(get("max_positions", "tokens_per_sample", default=512)),
            dropout=float(get("dropout", default=0.1)),
            attention_dropout=float(get("attention_dropout", default=0.1)),
            activation_dropout=float(get("activation_dropout", default=0.0)),
            scale_embedding=False,
        )
