"""Weights into a model: the one builder from a state dict, and the check that a state dict fits its args.
Reading the weights from a file is `xlbtm.formats` (`seed.load_seed` reads any format)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from xlbtm.errors import InputError
from xlbtm.models.config import ModelArgs

# what to do when a file's tensors do not fit the architecture it claims (readers pass their own)
SHAPE_REMEDY = (
    "the weights and the architecture they are read with come from different models: convert or export it again"
)


def check_state_fits(
    sd: dict,
    args: ModelArgs,
    where=None,
    model=None,
    *,
    name_in_file: Callable[[str], str] | None = None,
    claimed_by: str = "the model args",
    remedy: str = SHAPE_REMEDY,
) -> None:
    """The state dict has exactly the plain model's keys and shapes (checked on the meta device, no memory);
    else one InputError naming `where` (the file), the first tensors that differ (as `name_in_file` spells
    them: the file's own names, not xlbtm's), their shapes and the expected ones, what claims the architecture
    (`claimed_by`: "config.json", "the checkpoint's cfg", ...) and what to do (`remedy`).

    Every reader of weights calls it (formats.hf, formats.metaseq, formats.consolidated, consolidation of DCP
    checkpoints, models built from a state dict): a tensor of the wrong shape must stop the reader, not be
    written on into another format or fail later inside a matmul."""
    from xlbtm.models import build_model

    if model is None:
        with torch.device("meta"):
            model = build_model(args)
    ref = model.state_dict()

    def named(k: str) -> str:
        try:
            return name_in_file(k) if name_in_file is not None else k
        except (KeyError, ValueError):  # a key the file's naming has no name for: say xlbtm's
            return k

    arch = (
        f"{args.arch}, d_model {args.d_model}, {args.n_layers} layers, ffn_dim {args.ffn_dim}, vocab {args.vocab_size}"
    )
    missing, unexpected = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"missing {', '.join(named(k) for k in missing[:5])}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            what.append(
                f"unexpected {', '.join(named(k) for k in unexpected[:5])}{'...' if len(unexpected) > 5 else ''}"
            )
        raise InputError(
            f"the tensors do not fit the architecture in {claimed_by} ({arch}): {'; '.join(what)}; {remedy}", where
        )
    bad = [
        f"{named(k)} is {tuple(v.shape)}, expected {tuple(ref[k].shape)}"
        for k, v in sd.items()
        if tuple(v.shape) != tuple(ref[k].shape)
    ]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise InputError(
            f"tensor shape does not match the architecture in {claimed_by} ({arch}): {'; '.join(bad[:3])}{more}; "
            f"{remedy}",
            where,
        )


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
