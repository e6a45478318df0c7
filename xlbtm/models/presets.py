"""Named architectures: the public XGLM / XLM-R sizes plus tiny ones for tests and demos."""

from __future__ import annotations

from xlbtm.models.config import ModelArgs

_XGLM = dict(
    arch="xglm",
    vocab_size=256008,
    max_positions=2048,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    scale_embedding=True,
)
_XLMR = dict(
    arch="xlmr",
    vocab_size=250002,
    max_positions=512,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    scale_embedding=False,
    type_vocab_size=1,
)

PRESETS: dict[str, dict] = {
    # tiny models for tests / demos (vocab is usually overridden by the tokenizer's)
    "debug": dict(
        arch="xglm",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        ffn_dim=256,
        max_positions=512,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    ),
    "debug-xlmr": dict(
        arch="xlmr",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        ffn_dim=256,
        max_positions=512,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=False,
    ),
    # facebook/xglm-* (Lin et al. 2021)
    "xglm-564M": dict(_XGLM, d_model=1024, n_layers=24, n_heads=16, ffn_dim=4096),
    "xglm-1.7B": dict(_XGLM, d_model=2048, n_layers=24, n_heads=16, ffn_dim=8192),
    "xglm-2.9B": dict(_XGLM, d_model=2048, n_layers=48, n_heads=16, ffn_dim=8192),
    "xglm-4.5B": dict(_XGLM, d_model=2048, n_layers=48, n_heads=16, ffn_dim=16384),
    "xglm-7.5B": dict(_XGLM, d_model=4096, n_layers=32, n_heads=32, ffn_dim=16384),
    # FacebookAI/xlm-roberta-* (Conneau et al. 2020)
    "xlmr-base": dict(_XLMR, d_model=768, n_layers=12, n_heads=12, ffn_dim=3072),
    "xlmr-large": dict(_XLMR, d_model=1024, n_layers=24, n_heads=16, ffn_dim=4096),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides) -> ModelArgs:
    """ModelArgs of a named architecture; keyword overrides replace fields (None values are ignored)."""
    from xlbtm.errors import UsageError

    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ModelArgs(**fields)
    except (TypeError, ValueError) as e:
        raise UsageError(f"preset {name!r} with overrides {overrides}: {e}") from None
