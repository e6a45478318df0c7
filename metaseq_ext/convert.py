"""metaseq/fairseq checkpoint (any layout) -> xlbtm state dict + ModelArgs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlbtm.errors import InputError, UsageError
from xlbtm.models.config import ModelArgs


def args_from_metaseq(model_sd: dict, cfg: dict | None, arch: str, model_size: str | None = None,
                      where: Path | None = None) -> ModelArgs:
    """ModelArgs from the checkpoint's cfg; `model_size` (a preset) supplies the architecture when the
    cfg is absent, and must agree with the tensor shapes when given."""
    from xlbtm.models.adapters import infer_fairseq_sizes
    from xlbtm.models.presets import get_preset

    sizes = infer_fairseq_sizes(model_sd, arch)
    args = None
    if cfg:
        try:
            args = ModelArgs.from_fairseq(cfg, vocab_size=sizes["vocab_size"], arch=arch)
        except KeyError as e:
            if model_size is None:
                raise InputError(f"checkpoint cfg lacks {e.args[0]!r}; pass --model-size <preset> to give the "
                                 "architecture", where) from None
        except ValueError as e:
            raise InputError(f"unsupported architecture in checkpoint cfg: {e}", where) from None
    if args is None:
        if model_size is None:
            raise InputError("checkpoint has no model cfg (number of heads unknown); pass --model-size "
                             "<preset> (e.g. xglm-564M)", where)
        args = get_preset(model_size, vocab_size=sizes["vocab_size"])
    elif model_size is not None:
        ref = get_preset(model_size, vocab_size=sizes["vocab_size"])
        diff = {k: (getattr(args, k), getattr(ref, k)) for k in ("arch", "d_model", "n_layers", "n_heads", "ffn_dim")
                if getattr(args, k) != getattr(ref, k)}
        if diff:
            raise UsageError(f"--model-size {model_size} disagrees with the checkpoint cfg: "
                             + ", ".join(f"{k}: checkpoint {a} vs preset {b}" for k, (a, b) in diff.items()))
    if args.arch != arch:
        raise InputError(f"checkpoint tensors are {arch} but the preset/cfg says {args.arch}", where)
    bad = {k: (v, getattr(args, k)) for k, v in sizes.items() if getattr(args, k) != v}
    if bad:
        raise InputError("checkpoint tensors disagree with its architecture: "
                         + ", ".join(f"{k}: tensors {a} vs cfg {b}" for k, (a, b) in bad.items()), where)
    return args


def metaseq_to_xlbtm(path: str | Path, model_size: str | None = None) -> tuple[dict, ModelArgs, dict[str, Any]]:
    """(xlbtm_state_dict, args, info) from a metaseq/fairseq checkpoint file, shard, prefix or directory."""
    from metaseq_ext.sharded import load_metaseq_checkpoint
    from xlbtm.models.adapters import detect_fairseq_arch, fairseq_to_xlbtm

    ck = load_metaseq_checkpoint(path)
    arch = detect_fairseq_arch(ck.model)
    if arch is None:
        sample = ", ".join(list(ck.model)[:3])
        raise InputError(f"no decoder.* (XGLM) or encoder.sentence_encoder.* (XLM-R) keys; found {sample}, ...",
                         ck.files[0])
    try:
        sd = fairseq_to_xlbtm(ck.model, arch)
    except (KeyError, ValueError) as e:
        raise InputError(str(e).strip("'\""), ck.files[0]) from None
    args = args_from_metaseq(ck.model, ck.cfg, arch, model_size, where=ck.files[0])
    info = {"kind": "metaseq" if arch == "xglm" else "fairseq", "path": str(path),
            "files": [str(f) for f in ck.files], "model_parts": ck.num_model_parts, "shards": ck.num_shards}
    return sd, args, info
