"""The model an expert's training starts from, on each rank: the seed's weights, read once per process group."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from xlbtm.formats.seed import load_seed
from xlbtm.models import ModelArgs, build_model
from xlbtm.train.config import TrainConfig


def _seed_model(cfg: TrainConfig, tok):
    """The seed as a full model on CPU, identical on every rank (seeded), plus its ModelArgs."""
    torch.manual_seed(cfg.seed)  # preset seeds: the same random init on every rank
    # presets take the tokenizer's vocabulary; checkpoints must cover it
    model, args, _ = load_seed(cfg.seed_model, model_size=cfg.model_size, vocab_size=tok.vocab_size)
    if cfg.dropout is not None and cfg.dropout != args.dropout:
        # the models read their dropout rates from ModelArgs at build time: rebuild with the override

        args = dataclasses.replace(
            args, dropout=cfg.dropout, attention_dropout=cfg.dropout, activation_dropout=cfg.dropout
        )
        sd = model.state_dict()
        model = build_model(args)
        model.load_state_dict(sd)
    return model, args


def materialize(args, device):
    """A model built on the meta device, then allocated directly on `device` (no host copy)."""
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device=device)
    model.init_weights()  # also fills non-persistent buffers (sinusoidal positions)
    return model


def model_on_rank(cfg: TrainConfig, tok, device, world: int, is_main: bool):
    """(model on `device`, ModelArgs, the full seed state dict to scatter after parallelization, or None).

    Only rank 0 reads the seed (host memory: one copy per node, not one per GPU); the other ranks allocate
    on the device and receive the weights from rank 0 once the model is parallelized ({} on them)."""
    import torch.distributed as dist

    if world == 1:
        model, args = _seed_model(cfg, tok)
        return model.to(device), args, None
    obj: list[Any] = [None]  # rank 0's ModelArgs.to_dict(), broadcast
    full_sd = {}
    if is_main:
        seed_model, args = _seed_model(cfg, tok)
        full_sd = seed_model.state_dict()
        del seed_model
        obj = [args.to_dict()]
    dist.broadcast_object_list(obj, src=0)
    args = ModelArgs.from_dict(obj[0])
    return materialize(args, device), args, full_sd
