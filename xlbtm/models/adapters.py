"""State-dict key mappings: xlbtm <-> Hugging Face, xlbtm <-> metaseq/fairseq.

xlbtm keys (what `build_model(args).state_dict()` holds):
  XGLM : embed_tokens.weight, layers.{i}.self_attn.{q,k,v,out}_proj.*, layers.{i}.self_attn_layer_norm.*,
         layers.{i}.fc1.*, layers.{i}.fc2.*, layers.{i}.final_layer_norm.*, layer_norm.*
  XLM-R: embed_tokens.weight, embed_positions.weight, token_type_embed.weight, emb_layer_norm.*,
         layers.{i}.<same block names>, lm_head.{dense,layer_norm}.*, lm_head.bias
Block names are fairseq's, so metaseq/fairseq is a prefix change plus the tied/derived extras.
All functions are pure: dict of tensors in, dict of tensors out (tensors are shared, not copied).
"""

from __future__ import annotations

import re

import torch

from xlbtm.models.config import ModelArgs

# ------------------------------------------------------------------------------------ Hugging Face
_XLMR_HF_LAYER = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
_XLMR_HF_TOP = {
    "embed_tokens.weight": "roberta.embeddings.word_embeddings.weight",
    "embed_positions.weight": "roberta.embeddings.position_embeddings.weight",
    "token_type_embed.weight": "roberta.embeddings.token_type_embeddings.weight",
    "emb_layer_norm.weight": "roberta.embeddings.LayerNorm.weight",
    "emb_layer_norm.bias": "roberta.embeddings.LayerNorm.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.bias": "lm_head.bias",
}
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_key(key: str, arch: str) -> str:
    """The Hugging Face name of one xlbtm key (KeyError for a key XLM-R's HF layout has no name for)."""
    if arch == "xglm":
        return "model." + key
    if key in _XLMR_HF_TOP:
        return _XLMR_HF_TOP[key]
    m = _LAYER_RE.match(key)
    if not m or m.group(2) not in _XLMR_HF_LAYER:
        raise KeyError(f"unexpected XLM-R key {key!r}")
    return f"roberta.encoder.layer.{m.group(1)}.{_XLMR_HF_LAYER[m.group(2)]}.{m.group(3)}"


def xlbtm_to_hf(sd: dict, args: ModelArgs, include_tied: bool = False) -> dict:
    """HF XGLMForCausalLM / XLMRobertaForMaskedLM keys. Tied copies (lm_head.weight, lm_head.decoder.*)
    are left out unless include_tied, as `save_pretrained` does."""
    out = {hf_key(k, args.arch): v for k, v in sd.items()}
    if args.arch == "xglm":
        if include_tied:
            out["lm_head.weight"] = sd["embed_tokens.weight"]
        return out
    if include_tied:
        out["lm_head.decoder.weight"] = sd["embed_tokens.weight"]
        out["lm_head.decoder.bias"] = sd["lm_head.bias"]
    return out


def hf_to_xlbtm(hf: dict, arch: str) -> dict:
    """Inverse of xlbtm_to_hf. Ignores derived entries (sinusoid tables, position_ids, tied copies,
    pooler); raises KeyError naming a key it does not understand."""
    out = {}
    if arch == "xglm":
        for k, v in hf.items():
            if (
                k in ("lm_head.weight",)
                or k.endswith("embed_positions.weights")
                or k.endswith("embed_positions._float_tensor")
            ):
                continue
            if not k.startswith("model."):
                raise KeyError(f"unexpected XGLM key {k!r}")
            out[k[len("model.") :]] = v
        return out
    inv_top = {v: k for k, v in _XLMR_HF_TOP.items()}
    inv_layer = {v: k for k, v in _XLMR_HF_LAYER.items()}
    layer_re = re.compile(r"^roberta\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    for k, v in hf.items():
        if not k.startswith(("roberta.", "lm_head.")):
            k = "roberta." + k  # XLMRobertaModel checkpoints carry no prefix
        if k in inv_top:
            out[inv_top[k]] = v
        elif (
            k in ("lm_head.decoder.weight", "lm_head.decoder.bias")
            or k.startswith("roberta.pooler.")
            or k.endswith(("position_ids", "token_type_ids"))
        ):
            continue
        elif (m := layer_re.match(k)) and m.group(2) in inv_layer:
            out[f"layers.{m.group(1)}.{inv_layer[m.group(2)]}.{m.group(3)}"] = v
        else:
            raise KeyError(f"unexpected XLM-R key {k!r}")
    if "lm_head.bias" not in out and "lm_head.decoder.bias" in hf:
        out["lm_head.bias"] = hf["lm_head.decoder.bias"]
    return out


def hf_config(args: ModelArgs):
    """transformers config object for `args`."""
    if args.arch == "xglm":
        from transformers import XGLMConfig

        return XGLMConfig(
            vocab_size=args.vocab_size,
            max_position_embeddings=args.max_positions,
            d_model=args.d_model,
            ffn_dim=args.ffn_dim,
            num_layers=args.n_layers,
            attention_heads=args.n_heads,
            activation_function="gelu",
            dropout=args.dropout,
            attention_dropout=args.attention_dropout,
            activation_dropout=args.activation_dropout,
            layerdrop=0.0,
            init_std=args.init_std,
            scale_embedding=args.scale_embedding,
            use_cache=True,
            decoder_start_token_id=args.eos_id,
            pad_token_id=args.pad_id,
            bos_token_id=args.bos_id,
            eos_token_id=args.eos_id,
            tie_word_embeddings=True,
            architectures=["XGLMForCausalLM"],
        )
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.d_model,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        intermediate_size=args.ffn_dim,
        hidden_act="gelu",
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.attention_dropout,
        max_position_embeddings=args.max_positions + args.pad_id + 1,
        type_vocab_size=args.type_vocab_size,
        initializer_range=args.init_std,
        layer_norm_eps=args.layer_norm_eps,
        pad_token_id=args.pad_id,
        bos_token_id=args.bos_id,
        eos_token_id=args.eos_id,
        tie_word_embeddings=True,
        architectures=["XLMRobertaForMaskedLM"],
    )


def args_from_hf_config(cfg: dict) -> ModelArgs:
    """ModelArgs from a config.json dict (model_type xglm or xlm-roberta)."""
    mt = cfg.get("model_type")
    if mt == "xglm":
        return ModelArgs(
            arch="xglm",
            vocab_size=cfg["vocab_size"],
            d_model=cfg["d_model"],
            n_layers=cfg["num_layers"],
            n_heads=cfg["attention_heads"],
            ffn_dim=cfg["ffn_dim"],
            max_positions=cfg["max_position_embeddings"],
            dropout=cfg.get("dropout", 0.1),
            attention_dropout=cfg.get("attention_dropout", 0.1),
            activation_dropout=cfg.get("activation_dropout", 0.0),
            pad_id=cfg.get("pad_token_id", 1),
            bos_id=cfg.get("bos_token_id", 0),
            eos_id=cfg.get("eos_token_id", 2),
            scale_embedding=cfg.get("scale_embedding", True),
            init_std=cfg.get("init_std", 0.02),
        )
    if mt in ("xlm-roberta", "roberta"):
        pad = cfg.get("pad_token_id", 1)
        return ModelArgs(
            arch="xlmr",
            vocab_size=cfg["vocab_size"],
            d_model=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            ffn_dim=cfg["intermediate_size"],
            max_positions=cfg["max_position_embeddings"] - pad - 1,
            dropout=cfg.get("hidden_dropout_prob", 0.1),
            attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
            activation_dropout=0.0,
            pad_id=pad,
            bos_id=cfg.get("bos_token_id", 0),
            eos_id=cfg.get("eos_token_id", 2),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
            scale_embedding=False,
            type_vocab_size=cfg.get("type_vocab_size", 1),
            init_std=cfg.get("initializer_range", 0.02),
        )
    raise ValueError(f"unsupported model_type {mt!r} (xlbtm reads xglm and xlm-roberta)")


# ------------------------------------------------------------------------------- metaseq / fairseq
XGLM_PREFIX = "decoder."
XLMR_PREFIX = "encoder.sentence_encoder."
XLMR_HEAD_PREFIX = "encoder.lm_head."


def xlbtm_to_fairseq(sd: dict, args: ModelArgs) -> dict:
    """metaseq `transformer_lm` (XGLM) or fairseq `roberta` (XLM-R) keys, unfused q/k/v."""
    out = {}
    if args.arch == "xglm":
        for k, v in sd.items():
            out[XGLM_PREFIX + k] = v
        out["decoder.embed_positions._float_tensor"] = torch.zeros(1)
        out["decoder.version"] = torch.tensor([3.0])
        # metaseq's shared embedding appears under both names in its state dicts
        out["decoder.output_projection.weight"] = sd["embed_tokens.weight"]
        return out
    for k, v in sd.items():
        if k == "token_type_embed.weight":
            continue
        if k.startswith("lm_head."):
            out[XLMR_HEAD_PREFIX + k[len("lm_head.") :]] = v
        else:
            out[XLMR_PREFIX + k] = v
    tt = sd.get("token_type_embed.weight")
    if tt is not None and torch.count_nonzero(tt):
        # fairseq XLM-R has no segment table; type 0 is added to every token, so fold it into positions
        out[XLMR_PREFIX + "embed_positions.weight"] = sd["embed_positions.weight"] + tt[0]
    out[XLMR_HEAD_PREFIX + "weight"] = sd["embed_tokens.weight"]
    return out


def fairseq_key(key: str, arch: str) -> str:
    """The metaseq / fairseq name of one xlbtm key (what a reader's error message should call a tensor).
    XLM-R's token_type_embed has none (fairseq folds it into the positions): its xlbtm name is kept."""
    if arch == "xglm":
        return XGLM_PREFIX + key
    if key == "token_type_embed.weight":
        return key
    if key.startswith("lm_head."):
        return XLMR_HEAD_PREFIX + key[len("lm_head.") :]
    return XLMR_PREFIX + key


def split_fused_qkv(sd: dict) -> dict:
    """Unfuse metaseq `qkv_proj` (K, V, Q stacked on dim 0, one full-width tensor) and old fairseq
    `in_proj_weight` (Q, K, V order) into q_proj/k_proj/v_proj."""
    out = {}
    for k, v in sd.items():
        if ".qkv_proj." in k:
            base, kind = k.rsplit(".qkv_proj.", 1)
            kk, vv, qq = torch.chunk(v, 3, dim=0)
            out[f"{base}.k_proj.{kind}"], out[f"{base}.v_proj.{kind}"], out[f"{base}.q_proj.{kind}"] = kk, vv, qq
        elif k.endswith((".in_proj_weight", ".in_proj_bias")):
            base, kind = k.rsplit(".in_proj_", 1)
            qq, kk, vv = torch.chunk(v, 3, dim=0)
            out[f"{base}.q_proj.{kind}"], out[f"{base}.k_proj.{kind}"], out[f"{base}.v_proj.{kind}"] = qq, kk, vv
        else:
            out[k] = v
    return out


def detect_fairseq_arch(sd: dict) -> str | None:
    if any(k.startswith(XLMR_PREFIX) for k in sd):
        return "xlmr"
    if any(k.startswith(XGLM_PREFIX) for k in sd):
        return "xglm"
    return None


def fairseq_to_xlbtm(sd: dict, arch: str) -> dict:
    """Inverse of xlbtm_to_fairseq (accepts fused qkv_proj / in_proj). Raises KeyError on keys it
    does not know (e.g. NormFormer's ffn_layernorm) and ValueError on an untied output projection."""
    sd = split_fused_qkv(sd)
    out = {}
    if arch == "xglm":
        emb = sd.get("decoder.embed_tokens.weight")
        for k, v in sd.items():
            if k in ("decoder.version", "decoder.embed_positions._float_tensor") or k.startswith(
                "decoder.embed_positions."
            ):
                continue
            if k == "decoder.output_projection.weight":
                if emb is not None and v is not emb and not torch.equal(v, emb):
                    raise ValueError(
                        "decoder.output_projection.weight differs from decoder.embed_tokens.weight: "
                        "untied output projections are not XGLM"
                    )
                continue
            if not k.startswith(XGLM_PREFIX) or ".ffn_layernorm" in k or "alibi" in k:
                raise KeyError(f"unsupported metaseq key {k!r}")
            out[k[len(XGLM_PREFIX) :]] = v
        return out
    for k, v in sd.items():
        if k.startswith(XLMR_PREFIX):
            name = k[len(XLMR_PREFIX) :]
            if name == "version" or name.startswith("segment_embeddings") and v.numel() == 0:
                continue
            name = name.replace("layernorm_embedding.", "emb_layer_norm.")
            out[name] = v
        elif k.startswith(XLMR_HEAD_PREFIX):
            name = k[len(XLMR_HEAD_PREFIX) :]
            if name == "weight":
                continue  # tied to embed_tokens
            out["lm_head." + name] = v
        elif k in ("encoder.version",) or k.startswith("classification_heads."):
            continue
        else:
            raise KeyError(f"unsupported fairseq key {k!r}")
    if "embed_positions.weight" in out:
        out["token_type_embed.weight"] = torch.zeros(
            1, out["embed_positions.weight"].shape[1], dtype=out["embed_positions.weight"].dtype
        )
    return out


def infer_fairseq_sizes(sd: dict, arch: str) -> dict:
    """What the tensors themselves say: vocab, d_model, n_layers, ffn_dim (heads are not recoverable)."""
    pre = XGLM_PREFIX if arch == "xglm" else XLMR_PREFIX
    emb = sd[pre + "embed_tokens.weight"]
    n_layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(re.escape(pre) + r"layers\.(\d+)\.", k)))
    out = {
        "vocab_size": emb.shape[0],
        "d_model": emb.shape[1],
        "n_layers": n_layers,
        "ffn_dim": sd[pre + "layers.0.fc1.weight"].shape[0],
    }
    if arch == "xlmr":
        out["max_positions"] = sd[pre + "embed_positions.weight"].shape[0] - 2
    return out
