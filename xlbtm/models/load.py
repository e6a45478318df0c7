"""Weights into a model: the one builder from a state dict, and the check that a state dict fits its args.
Reading the weights from a file is `xlbtm.formats` (`seed.load_seed` reads any format)."""

from __future__ import annotations

import torch

from xlbtm.errors import InputError
from xlbtm.models.config import ModelArgs


def check_state_fits(sd: dict, args: ModelArgs, where=None, model=None) -> None:
    """The state dict has exactly the plain model's keys and shapes (checked on the meta device, no memory);
    else one InputError naming `where`."""
    from xlbtm.models import build_model

    if model is None:
        with torch.device("meta"):
            model = build_model(args)
    ref = model.state_dict()
    missing, unexpected = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    if missing or unexpected:
        raise InputError(
            f"weights do not fit a {args.arch} model with these args: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}",
            where,
        )
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(ref[k].shape)}" for k, v in sd.items() if v.shape != ref[k].shape]
    if bad:
        raise InputError("tensor shapes do not match the architecture: " + "; ".join(bad[:5]), where)


def model_from_state_dict(
    sd: dict, args: ModelArgs, dtype: torch.dtype | None = torch.float32, where: str | None = None
):
    """The one way to make a model from weights: built on the meta device, checked (`check_state_fits`),
    then adopting the tensors (no second copy, no wasted random init)."""
    from xlbtm.models import build_model

    with torch.device("meta"):
        model = build_model(args)
    check_state_fits(sd, args, where, model)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    # assign=True adopts the tensors: give each parameter its own storage (no views of fused qkv)
    sd = own_storage(sd)
    model.load_state_dict(sd, assign=True, strict=True)
    init_buffers = getattr(model, "init_buffers", None)  # build_model returns a plain nn.Module
    if init_buffers is not None:
        init_buffers()
    return model


def own_storage(tensors: dict) -> dict:
    """CPU contiguous tensors that each own their storage: safetensors refuses shared storage (views from
    unfused qkv, tied copies), and adopted parameters should not alias each other. Copies only those."""
    seen, out = set(), {}
    for k, t in tensors.items():
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        t = t.detach().to("cpu").contiguous()
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in seen or st.nbytes() != t.numel() * t.element_size():
            t = t.clone()
            st = t.untyped_storage()
            key = st.data_ptr()
        seen.add(key)
        out[k] = t
    return out
