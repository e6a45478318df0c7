"""metaseq / fairseq checkpoints, read without metaseq, fairseq or fairscale installed: FSDP-flattened shards
and Megatron model-parallel parts joined into one state dict, then converted to xlbtm (`metaseq_to_xlbtm`).
xlbtm never writes this layout (its tests do: tests/metaseq_writer.py); it writes consolidated.pt instead.

File layout written by metaseq (c-BTM / X-ELM forks):
    <prefix>-model_part-<mp>-shard<dp>.pt     model parallel part mp, data-parallel (FSDP) shard dp
    <prefix>-shard<dp>.pt                     FSDP only
    <prefix>-model_part-<mp>.pt               model parallel only
    <prefix>.pt                               a single (possibly consolidated) file
Each shard holds `model` (flat parameters such as `decoder.layers.3.flat_param_0`, padded to a multiple
of the FSDP world size, plus buffers) and `shard_metadata` (fairscale's `local_metadata_dict()`:
per FSDP instance the original names, shapes, numels and padding). Model-parallel parts hold column
shards (dim 0) of q/k/v/fc1/embed_tokens, row shards (dim 1) of out_proj/fc2 weights, everything
else replicated; metaseq fuses q/k/v per part as `qkv_proj` stacked in K, V, Q order.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from xlbtm.errors import InputError, UsageError
from xlbtm.models.adapters import (
    detect_fairseq_arch,
    fairseq_key,
    fairseq_to_xlbtm,
    infer_fairseq_sizes,
    split_fused_qkv,
)
from xlbtm.models.config import ModelArgs
from xlbtm.models.load import check_state_fits
from xlbtm.models.presets import get_preset
from xlbtm.models.safe_load import safe_torch_load

log = logging.getLogger("xlbtm.formats")

_NAME_RE = re.compile(r"^(?P<prefix>.+?)(?:-model_part-(?P<mp>\d+))?(?:-shard(?P<dp>\d+))?\.pt$")


@dataclass
class MetaseqCheckpoint:
    model: dict[str, torch.Tensor]  # full model, metaseq/fairseq key names, q/k/v unfused
    cfg: dict[str, Any] | None  # the model section of cfg (or legacy args), as a plain dict
    files: list[Path] = field(default_factory=list)
    num_model_parts: int = 1
    num_shards: int = 1
    raw: dict[str, Any] = field(default_factory=dict)  # top-level entries of the first file except model


# ------------------------------------------------------------------------------ FSDP unflattening
def _unpad(t: torch.Tensor, pad: int) -> torch.Tensor:
    return t[:-pad] if pad > 0 else t


def consolidate_shard_weights(
    shard_weights: list[dict], shard_metadata: list[dict], strict: bool = True, with_module_buffers: bool = True
) -> dict[str, torch.Tensor]:
    """Full state dict from the flat shards of one model-parallel part (all data-parallel ranks).

    Same result as fairscale's `FullyShardedDataParallel.consolidate_shard_weights` (tested against it),
    re-implemented so reading needs no fairscale, with clear errors and shared parameters copied for
    every FSDP instance (fairscale only handles the last one's).
    """
    if not shard_weights or len(shard_weights) != len(shard_metadata):
        raise ValueError(
            f"need one metadata per shard, got {len(shard_weights)} shards / {len(shard_metadata)} metadata"
        )
    out: dict[str, torch.Tensor] = {}
    world = len(shard_weights)
    shared: list[tuple[str, str]] = []
    for idx, meta in enumerate(shard_metadata[0]["param_metadata"]):
        fsdp_path = meta["fsdp_path"]
        for backing, info in meta["params"].items():
            key = f"{fsdp_path}.{backing}" if fsdp_path else backing
            if key not in shard_weights[0]:
                if strict:
                    raise KeyError(f"flat parameter {key!r} listed in shard_metadata is missing from shard 0")
                continue
            pieces = []
            for r in range(world):
                if key not in shard_weights[r]:
                    raise KeyError(f"flat parameter {key!r} is missing from shard {r}")
                pad = shard_metadata[r]["param_metadata"][idx]["params"][backing]["padding"]
                pieces.append(_unpad(shard_weights[r][key].reshape(-1), pad))
                if meta.get("no_broadcast_optim_state"):
                    break
            flat = torch.cat(pieces, dim=0)
            numels = list(info["numels"])
            if sum(numels) != flat.numel():
                raise ValueError(
                    f"{key}: shards hold {flat.numel()} values but metadata expects {sum(numels)} "
                    f"(are all {world} shards from the same checkpoint?)"
                )
            for name, t, shape in zip(info["names"], flat.split(numels), info["shapes"]):
                out[f"{fsdp_path}.{name}" if fsdp_path else name] = t.view(tuple(shape))
        shared += [tuple(x) for x in meta.get("shared_param_info", [])]
    for src, dst in shared:
        out[dst] = out[src]
    if with_module_buffers:
        for name in shard_metadata[0].get("buffer_names", []):
            if name in shard_weights[0]:
                out[name] = shard_weights[0][name]
            elif strict:
                raise KeyError(f"buffer {name!r} listed in shard_metadata is missing from shard 0")
    return out


# ---------------------------------------------------------------------------- model-parallel glue
def glue_model_parallel(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One full state dict from Megatron model-parallel parts (q/k/v already unfused per part)."""
    if len(parts) == 1:
        return dict(parts[0])
    out = {}
    for key in parts[0]:
        missing = [i for i, p in enumerate(parts) if key not in p]
        if missing:
            raise KeyError(f"{key!r} is missing from model part(s) {missing}")
        ts = [p[key] for p in parts]
        leaf = key.rsplit(".", 2)
        module = leaf[-2] if len(leaf) >= 2 else ""
        if key.endswith("_float_tensor"):
            out[key] = ts[0]
        elif module in ("q_proj", "k_proj", "v_proj", "fc1") or key.endswith(
            ("embed_tokens.weight", "output_projection.weight")
        ):
            out[key] = torch.cat(ts, dim=0)  # column parallel: output rows (and biases) are split
        elif module in ("out_proj", "fc2") and key.endswith(".weight"):
            out[key] = torch.cat(ts, dim=1)  # row parallel: input columns are split
        elif "ffn_layernorm" in key:
            raise KeyError(f"{key!r}: NormFormer ffn_layernorm is not part of XGLM")
        else:  # replicated (LayerNorms, row-parallel biases, version)
            if any(t.shape != ts[0].shape or not torch.allclose(t.float(), ts[0].float()) for t in ts[1:]):
                log.warning("replicated tensor %s differs across model parts; using part 0", key)
            out[key] = ts[0]
    return out


# ------------------------------------------------------------------------------------ file finding
def is_shard_name(name: str) -> bool:
    """True for `<prefix>-model_part-<m>[-shard<n>].pt` / `<prefix>-shard<n>.pt`: one piece of a sharded
    metaseq checkpoint, not a whole single-file one."""
    m = _NAME_RE.match(name)
    return m is not None and (m.group("mp") is not None or m.group("dp") is not None)


def find_checkpoint_files(path: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """{model_part: {shard: file}} for a file, a shard file, a directory or a filename prefix."""
    path = Path(path)
    if path.is_dir():
        cands = sorted(path.glob("checkpoint_last*.pt")) or sorted(path.glob("consolidated.pt"))
        if not cands:
            raise InputError("no checkpoint_last*.pt or consolidated.pt in this directory", path)
        path = cands[0]
    if path.is_file():
        m = _NAME_RE.match(path.name)
        if not m or (m.group("mp") is None and m.group("dp") is None):
            return {0: {0: path}}
        prefix = path.parent / m.group("prefix")
    else:
        prefix = path.with_suffix("") if path.suffix == ".pt" else path
    found: dict[int, dict[int, Path]] = {}
    for f in sorted(prefix.parent.glob(prefix.name + "*.pt")):
        m = _NAME_RE.match(f.name)
        if not m or m.group("prefix") != prefix.name or (m.group("mp") is None and m.group("dp") is None):
            continue
        found.setdefault(int(m.group("mp") or 0), {})[int(m.group("dp") or 0)] = f
    if not found:
        raise InputError(
            "no metaseq checkpoint files match this path or prefix "
            "(expected <prefix>-model_part-<m>-shard<n>.pt, <prefix>-shard<n>.pt or a .pt file)",
            path,
        )
    n_mp = max(found) + 1
    n_dp = max(max(s) for s in found.values()) + 1
    uses_mp = any("-model_part-" in f.name for s in found.values() for f in s.values())
    uses_dp = any(re.search(r"-shard\d+\.pt$", f.name) for s in found.values() for f in s.values())
    for mp in range(n_mp):
        for dp in range(n_dp):
            if dp not in found.get(mp, {}):
                name = (
                    prefix.name + (f"-model_part-{mp}" if uses_mp else "") + (f"-shard{dp}" if uses_dp else "") + ".pt"
                )
                raise InputError(
                    f"incomplete sharded checkpoint: {name} is missing "
                    f"(expected {n_mp} model part(s) x {n_dp} shard(s))",
                    prefix.parent,
                )
    return found


def _cfg_model(ckpt: dict) -> dict | None:
    cfg = ckpt.get("cfg")
    m = None
    if isinstance(cfg, dict):
        m = cfg.get("model")
    if m is None and ckpt.get("args") is not None:
        m = ckpt["args"]
    if isinstance(m, argparse.Namespace):
        m = vars(m)
    return dict(m) if isinstance(m, dict) else None


def load_metaseq_checkpoint(path: str | os.PathLike) -> MetaseqCheckpoint:
    """Read any metaseq/fairseq checkpoint layout into one full, unfused state dict (metaseq names)."""
    files = find_checkpoint_files(path)
    parts, first, all_files = [], None, []
    n_dp = 1
    for mp in sorted(files):
        shards = [files[mp][dp] for dp in sorted(files[mp])]
        n_dp = len(shards)
        weights, metas = [], []
        for f in shards:
            ck = safe_torch_load(f)
            if not isinstance(ck, dict) or "model" not in ck:
                raise InputError("not a metaseq/fairseq checkpoint (no 'model' entry)", f)
            if first is None:
                first = ck
            weights.append(ck["model"])
            metas.append(ck.get("shard_metadata"))
            all_files.append(f)
        if metas[0] is not None and any(".flat_param" in k or k.startswith("flat_param") for k in weights[0]):
            if any(m is None for m in metas):
                raise InputError("some shards lack shard_metadata", shards[0])
            try:
                part = consolidate_shard_weights(weights, cast(list[dict], metas), strict=True)  # (none is None)
            except (KeyError, ValueError) as e:
                raise InputError(f"cannot unflatten FSDP shards: {e}", shards[0]) from None
        else:
            part = weights[0]  # unflattened (already consolidated) weights are complete in every shard
        parts.append(split_fused_qkv(part))
    try:
        model = glue_model_parallel(parts)
    except KeyError as e:
        raise InputError(f"cannot join model-parallel parts: {e}", all_files[0]) from None
    assert first is not None  # find_checkpoint_files names at least one file (or raises)
    raw = {k: v for k, v in first.items() if k not in ("model", "shard_metadata", "last_optimizer_state")}
    return MetaseqCheckpoint(
        model=model, cfg=_cfg_model(first), files=all_files, num_model_parts=len(parts), num_shards=n_dp, raw=raw
    )


# ------------------------------------------------------------------------------ to xlbtm
def args_from_metaseq(
    model_sd: dict, cfg: dict | None, arch: str, model_size: str | None = None, where: Path | None = None
) -> ModelArgs:
    """ModelArgs from the checkpoint's cfg; `model_size` (a preset) supplies the architecture when the
    cfg is absent, and must agree with the tensor shapes when given."""
    sizes = infer_fairseq_sizes(model_sd, arch)
    args = None
    if cfg:
        try:
            args = ModelArgs.from_fairseq(cfg, vocab_size=sizes["vocab_size"], arch=arch)
        except KeyError as e:
            if model_size is None:
                raise InputError(
                    f"checkpoint cfg lacks {e.args[0]!r}; pass --model-size <preset> to give the architecture", where
                ) from None
        except ValueError as e:
            raise InputError(f"unsupported architecture in checkpoint cfg: {e}", where) from None
    if args is None:
        if model_size is None:
            raise InputError(
                "checkpoint has no model cfg (number of heads unknown); pass --model-size <preset> (e.g. xglm-564M)",
                where,
            )
        args = get_preset(model_size, vocab_size=sizes["vocab_size"])
    elif model_size is not None:
        ref = get_preset(model_size, vocab_size=sizes["vocab_size"])
        diff = {
            k: (getattr(args, k), getattr(ref, k))
            for k in ("arch", "d_model", "n_layers", "n_heads", "ffn_dim")
            if getattr(args, k) != getattr(ref, k)
        }
        if diff:
            raise UsageError(
                f"--model-size {model_size} disagrees with the checkpoint cfg: "
                + ", ".join(f"{k}: checkpoint {a} vs preset {b}" for k, (a, b) in diff.items())
            )
    if args.arch != arch:
        raise InputError(f"checkpoint tensors are {arch} but the preset/cfg says {args.arch}", where)
    bad = {k: (v, getattr(args, k)) for k, v in sizes.items() if getattr(args, k) != v}
    if bad:
        raise InputError(
            "checkpoint tensors disagree with its architecture: "
            + ", ".join(f"{k}: tensors {a} vs cfg {b}" for k, (a, b) in bad.items()),
            where,
        )
    return args


def metaseq_to_xlbtm(path: str | os.PathLike, model_size: str | None = None) -> tuple[dict, ModelArgs, dict[str, Any]]:
    """(xlbtm_state_dict, args, info) from a metaseq/fairseq checkpoint file, shard, prefix or directory."""
    ck = load_metaseq_checkpoint(path)
    arch = detect_fairseq_arch(ck.model)
    if arch is None:
        sample = ", ".join(list(ck.model)[:3])
        raise InputError(
            f"no decoder.* (XGLM) or encoder.sentence_encoder.* (XLM-R) keys; found {sample}, ...", ck.files[0]
        )
    try:
        sd = fairseq_to_xlbtm(ck.model, arch)
    except (KeyError, ValueError) as e:
        raise InputError(str(e).strip("'\""), ck.files[0]) from None
    args = args_from_metaseq(ck.model, ck.cfg, arch, model_size, where=ck.files[0])
    # args_from_metaseq compares the sizes a few tensors imply; every other tensor must fit them too
    check_state_fits(
        sd,
        args,
        ck.files[0] if len(ck.files) == 1 else Path(path),
        name_in_file=lambda k: fairseq_key(k, arch),
        claimed_by="the checkpoint's cfg" if ck.cfg else f"--model-size {model_size}",
        remedy="the tensors and the cfg come from different models (or some shards from another checkpoint): "
        "consolidate or export the checkpoint again, or pass the --model-size it was trained with",
    )
    info = {
        "kind": "metaseq" if arch == "xglm" else "fairseq",
        "path": str(path),
        "files": [str(f) for f in ck.files],
        "model_parts": ck.num_model_parts,
        "shards": ck.num_shards,
    }
    return sd, args, info
