"""Write a model as metaseq would have saved it mid-training: FSDP-flattened shards x model-parallel parts
(the fixtures of the metaseq reader's tests, `xlbtm.formats.metaseq`).

`<prefix>-model_part-<mp>-shard<dp>.pt` files in the layout fairscale/metaseq write: flat_param_0 per
FSDP-wrapped layer and for the root, torch.chunk sharding with end padding, fairscale `local_metadata_dict()`
shard_metadata, fused K,V,Q qkv_proj per model part, vocab-parallel embeddings, `cfg` holding an
argparse.Namespace like legacy checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from xlbtm.models.config import ModelArgs


def split_model_parallel(sd: dict, parts: int, fuse_qkv: bool = True) -> list[dict]:
    """Split a full metaseq XGLM state dict (unfused q/k/v) into Megatron model-parallel parts."""
    out = [dict() for _ in range(parts)]
    for k, v in sd.items():
        module = k.rsplit(".", 2)[-2] if k.count(".") >= 2 else ""
        if module in ("q_proj", "k_proj", "v_proj", "fc1") or k.endswith(
            ("embed_tokens.weight", "output_projection.weight")
        ):
            chunks = torch.chunk(v, parts, dim=0)
        elif module in ("out_proj", "fc2") and k.endswith(".weight"):
            chunks = torch.chunk(v, parts, dim=1)
        else:
            chunks = [v] * parts
        for p in range(parts):
            out[p][k] = chunks[p].clone()
    if fuse_qkv:
        for part in out:
            for k in [k for k in part if ".self_attn.q_proj." in k]:
                base, kind = k.rsplit(".q_proj.", 1)
                kk, vv, qq = (part.pop(f"{base}.{n}_proj.{kind}") for n in ("k", "v", "q"))
                part[f"{base}.qkv_proj.{kind}"] = torch.cat([kk, vv, qq], dim=0)  # metaseq's K, V, Q order
    return out


def _shard(flat: torch.Tensor, world: int, rank: int) -> tuple[torch.Tensor, int]:
    """fairscale FullyShardedDataParallel._get_shard."""
    chunks = list(torch.flatten(flat).chunk(world))
    while len(chunks) < world:
        chunks.append(chunks[0].new_empty(0))
    pad = chunks[0].numel() - chunks[rank].numel()
    shard = chunks[rank].clone()
    if pad > 0:
        shard = F.pad(shard, [0, pad])
    return shard, pad


def flatten_and_shard(sd: dict, world: int) -> tuple[list[dict], list[dict]]:
    """(shard_weights, shard_metadata) per data-parallel rank, metaseq's FSDP wrapping: one FSDP unit per
    decoder layer plus the root holding everything else; output_projection shared with embed_tokens."""
    buffers = [k for k in sd if k.endswith(("_float_tensor", ".version"))]
    shared = (
        [("decoder.embed_tokens.weight", "decoder.output_projection.weight")]
        if "decoder.output_projection.weight" in sd
        else []
    )
    units: dict[str, list[str]] = {"": []}
    for k in sd:
        if k in buffers or k in [d for _, d in shared]:
            continue
        parts = k.split(".")
        if parts[0] == "decoder" and len(parts) > 2 and parts[1] == "layers":
            units.setdefault(f"decoder.layers.{parts[2]}", []).append(k)
        else:
            units[""].append(k)
    order = [""] + sorted((u for u in units if u), key=lambda u: int(u.rsplit(".", 1)[1]))
    weights = [dict() for _ in range(world)]
    metas = [dict(param_metadata=[], buffer_names=list(buffers)) for _ in range(world)]
    for unit in order:
        keys = units[unit]
        flat = torch.cat([sd[k].reshape(-1) for k in keys])
        rel = [k[len(unit) + 1 :] if unit else k for k in keys]
        for r in range(world):
            shard, pad = _shard(flat, world, r)
            weights[r][f"{unit}.flat_param_0" if unit else "flat_param_0"] = shard
            metas[r]["param_metadata"].append(
                {
                    "fsdp_path": unit,
                    "params": {
                        "flat_param_0": {
                            "names": rel,
                            "shapes": [sd[k].shape for k in keys],
                            "numels": [sd[k].numel() for k in keys],
                            "padding": pad,
                        }
                    },
                    "no_broadcast_optim_state": False,
                    "shared_param_info": shared if unit == "" else [],
                }
            )
    for r in range(world):
        for b in buffers:
            weights[r][b] = sd[b].clone()
    return weights, metas


def write_sharded_checkpoint(
    prefix: str | Path,
    xlbtm_state_dict: dict,
    args: ModelArgs,
    model_parts: int = 2,
    shards: int = 2,
    fuse_qkv: bool = True,
    with_cfg: bool = True,
) -> list[Path]:
    """Write `<prefix>-model_part-<mp>-shard<dp>.pt` (or `<prefix>-shard<dp>.pt` when model_parts == 1)."""
    from xlbtm.io import atomic_path
    from xlbtm.models.adapters import xlbtm_to_fairseq

    assert args.arch == "xglm", "metaseq sharded checkpoints are XGLM (decoder) models"
    full = xlbtm_to_fairseq(xlbtm_state_dict, args)
    full = {k: v.detach().clone() for k, v in full.items()}
    cfg = {
        "model": argparse.Namespace(**args.to_fairseq(), model_parallel_size=model_parts),
        "common": {"model_parallel_size": model_parts},
        "distributed_training": {"ddp_backend": "fully_sharded"},
    }
    prefix = Path(prefix)
    written = []
    for mp, part in enumerate(split_model_parallel(full, model_parts, fuse_qkv)):
        weights, metas = flatten_and_shard(part, shards)
        for dp in range(shards):
            name = prefix.name + (f"-model_part-{mp}" if model_parts > 1 else "") + f"-shard{dp}.pt"
            ck = {
                "model": weights[dp],
                "shard_metadata": metas[dp],
                "cfg": cfg if with_cfg else None,
                "args": None,
                "extra_state": {"train_iterator": {"epoch": 1}, "val_loss": 3.5},
                "optimizer_history": [{"criterion_name": "VocabParallelCrossEntropyCriterion", "num_updates": 10}],
                "last_optimizer_state": {"state": {}},
            }
            path = prefix.parent / name
            with atomic_path(path) as tmp:
                torch.save(ck, tmp)
            written.append(path)
    return written
