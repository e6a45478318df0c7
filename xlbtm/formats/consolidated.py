"""consolidated.pt: one file per expert, in metaseq's layout so existing metaseq tooling reads it.

    {"model": {"decoder.embed_tokens.weight": ..., "decoder.layers.0.self_attn.q_proj.weight": ..., ...},
     "cfg": {"model": {<metaseq/fairseq model args>}, "common": {"model_parallel_size": 1}},
     "args": None, "extra_state": {}, "optimizer_history": [],
     "xlbtm": {"format": "xlbtm-consolidated-v1", "model_args": ModelArgs.to_dict(), "extra": {...}}}

Only tensors and plain Python values, so it loads with torch.load(weights_only=True).
XLM-R experts use fairseq's `encoder.sentence_encoder.*` / `encoder.lm_head.*` names instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from xlbtm.errors import InputError
from xlbtm.formats.metaseq import metaseq_to_xlbtm
from xlbtm.io import atomic_path
from xlbtm.models.adapters import detect_fairseq_arch, fairseq_key, fairseq_to_xlbtm, xlbtm_to_fairseq
from xlbtm.models.config import ModelArgs
from xlbtm.models.load import check_state_fits
from xlbtm.models.safe_load import REBUILD_REMEDY, safe_torch_load

FORMAT = "xlbtm-consolidated-v1"


def _plain(t):
    if hasattr(t, "full_tensor"):  # a DTensor from a sharded model: gather it
        t = t.full_tensor()
    return t.detach().to("cpu")


def save_consolidated(
    path: str | os.PathLike,
    xlbtm_state_dict: dict,
    args: ModelArgs,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an xlbtm state dict (keys as in build_model(args).state_dict()) as a metaseq consolidated.pt.
    `extra` must hold plain Python values (json-like); `dtype` optionally casts floating tensors."""
    sd = {}
    for k, v in xlbtm_state_dict.items():
        v = _plain(v)
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        sd[k] = v
    ckpt: dict[str, Any] = {
        "model": xlbtm_to_fairseq(sd, args),
        "cfg": {"model": args.to_fairseq(), "common": {"model_parallel_size": 1}},
        "args": None,
        "extra_state": {},
        "optimizer_history": [],
        "xlbtm": {"format": FORMAT, "model_args": args.to_dict(), "extra": dict(extra or {})},
    }
    tt = sd.get("token_type_embed.weight")
    if tt is not None and torch.count_nonzero(tt):
        # fairseq has no token-type table, so `model` carries it folded into the positions; keep the
        # unfolded pair too so xlbtm/HF round trips stay bit-exact
        ckpt["xlbtm"]["unfolded"] = {
            "token_type_embed.weight": tt,
            "embed_positions.weight": sd["embed_positions.weight"],
        }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def load_consolidated(path: str | os.PathLike) -> tuple[dict, ModelArgs, dict[str, Any]]:
    """(xlbtm_state_dict, args, extra). Also reads a plain metaseq/fairseq consolidated checkpoint
    (then args come from its cfg and extra is {})."""
    ck = safe_torch_load(path)
    if not isinstance(ck, dict) or "model" not in ck:
        raise InputError("not a consolidated checkpoint (no 'model' entry)", path)
    meta = ck.get("xlbtm")
    if not isinstance(meta, dict):
        sd, args, _ = metaseq_to_xlbtm(path)
        return sd, args, {}
    if meta.get("format") != FORMAT:
        raise InputError(f"unknown xlbtm checkpoint format {meta.get('format')!r} (expected {FORMAT})", path)
    try:
        args = ModelArgs.from_dict(meta["model_args"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"bad model_args in checkpoint: {e}", path) from None
    arch = detect_fairseq_arch(ck["model"])
    if arch != args.arch:
        raise InputError(f"model keys look like {arch} but model_args say {args.arch}", path)
    try:
        sd = fairseq_to_xlbtm(ck["model"], arch)
    except (KeyError, ValueError) as e:
        raise InputError(str(e).strip("'\""), path) from None
    unfolded = meta.get("unfolded") or {}
    if not isinstance(unfolded, dict):
        raise InputError("bad 'unfolded' entry in the xlbtm header (not a dict of tensors)", path)
    sd.update(unfolded)
    check_state_fits(
        sd,
        args,
        path,
        name_in_file=lambda k: fairseq_key(k, args.arch),
        claimed_by="its xlbtm header's model_args",
        remedy=f"the file was altered or mixed up: {REBUILD_REMEDY}",
    )
    extra = meta.get("extra")
    return sd, args, dict(extra) if isinstance(extra, dict) else {}
