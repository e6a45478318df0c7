"""--seed-model: build a model from a preset, an HF dir, a metaseq/fairseq checkpoint or consolidated.pt."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from xlbtm.errors import InputError, UsageError
from xlbtm.formats.convert import detect_format, read_model
from xlbtm.formats.hf import WEIGHT_FILES, checked_hf_state, read_hf_args
from xlbtm.models import build_model, num_params
from xlbtm.models.config import ModelArgs
from xlbtm.models.load import model_from_state_dict
from xlbtm.models.presets import PRESETS, get_preset

log = logging.getLogger("xlbtm.models")


def _describe(kind: str, path, args: ModelArgs, model, extra: dict | None = None) -> dict[str, Any]:
    info = {
        "kind": kind,
        "path": None if path is None else str(path),
        "arch": args.arch,
        "num_params": num_params(model),
        "vocab_size": args.vocab_size,
        "model_args": args.to_dict(),
    }
    info.update(extra or {})
    return info


def load_seed(
    spec: str | os.PathLike,
    model_size: str | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype | None = torch.float32,
):
    """(model, args, info).

    spec: a preset name (random init; `vocab_size` sets its vocabulary), a Hugging Face directory, a
    metaseq/fairseq .pt (single file, one shard of `<prefix>-model_part-M-shardN.pt`, or the prefix),
    an xlbtm consolidated.pt, or a directory holding one of those. `model_size` (preset name) gives the
    architecture of checkpoints without a cfg and is checked against those with one. `vocab_size`
    (the tokenizer's) must not exceed a checkpoint's vocabulary.
    """
    spec_s = str(spec)
    if is_preset(spec_s):
        args = get_preset(spec_s, vocab_size=vocab_size)
        model = build_model(args)
        if dtype is not None:
            model = model.to(dtype)
        info = _describe("preset", None, args, model, {"preset": spec_s})
        log.info("seed model: preset %s (random init), %s params", spec_s, f"{info['num_params']:,}")
        return model, args, info

    path = Path(spec)
    if not path.exists() and not (path.parent.is_dir() and any(path.parent.glob(path.name + "*.pt"))):
        raise UsageError(
            f"--seed-model {spec_s!r} is not a preset ({', '.join(PRESETS)}), a Hugging Face "
            "directory or a checkpoint file"
        )
    kind, path = detect_format(path)
    sd, args, prov = read_model(kind, path, model_size)
    if kind == "metaseq":
        kind, extra = prov["source_format"], {k: prov[k] for k in ("model_parts", "shards", "files")}
    else:
        extra = {"extra": prov} if kind == "xlbtm" else {}
    _check_vocab(spec_s, args, vocab_size)
    if model_size is not None and kind in ("hf", "xlbtm"):
        ref = get_preset(model_size)
        diff = [k for k in ("arch", "d_model", "n_layers", "n_heads", "ffn_dim") if getattr(ref, k) != getattr(args, k)]
        if diff:
            raise UsageError(f"--model-size {model_size} disagrees with {spec_s} on {', '.join(diff)}")
    model = model_from_state_dict(sd, args, dtype=dtype, where=str(path))
    info = _describe(kind, path, args, model, extra)
    log.info(
        "seed model: %s checkpoint %s (%s, d=%d, %d layers), %s params",
        kind,
        path,
        args.arch,
        args.d_model,
        args.n_layers,
        f"{info['num_params']:,}",
    )
    return model, args, info


def is_preset(spec: str | os.PathLike) -> bool:
    """A --seed-model that names a preset (random init), not a path: what `load_seed` builds from scratch."""
    return str(spec) in PRESETS and not Path(str(spec)).exists()


def weights_fingerprint(state: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: equal exactly when the weights
    are (one tensor at a time on the CPU: no second copy of the model)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k]
        if hasattr(t, "full_tensor"):  # a DTensor: its whole value
            t = t.full_tensor()
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(state[k].shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def seed_identity(spec: str | os.PathLike, init_seed: int, state: dict) -> str:
    """What an expert's initial weights are, for expert.json: a preset's random init is named by the preset and
    the seed that drew it (not by its bytes: torch's CPU kernels may draw other last bits on another machine);
    a checkpoint's by the fingerprint of the weights as loaded (the path names nothing: a file can be replaced,
    one seed can sit at two paths). Experts are averaged (merge_experts, --ensemble-type average) or grown
    (add_experts) only when these are equal."""
    if is_preset(spec):
        return f"preset {spec}, init seed {init_seed}"
    return f"weights sha256:{weights_fingerprint(state)}"


def seed_args(spec: str | os.PathLike, model_size: str | None = None, vocab_size: int | None = None) -> ModelArgs:
    """The ModelArgs `load_seed` would give, checked the same way, read as cheaply as the format allows:
    presets and Hugging Face dirs from their config (plus the weights' safetensors header), other
    checkpoints by loading them once. For refusing a bad seed before any job is queued."""
    spec_s = str(spec)
    if is_preset(spec_s):
        return get_preset(spec_s, vocab_size=vocab_size)
    path = Path(spec)
    if not (path.is_dir() and (path / "config.json").is_file()):
        return load_seed(spec, model_size=model_size, vocab_size=vocab_size, dtype=None)[1]

    args = read_hf_args(path)
    weights = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
    if not weights:
        raise InputError("no model.safetensors, pytorch_model.bin or sharded index found", path)
    if weights[0].name == "model.safetensors":
        from safetensors import SafetensorError, safe_open

        try:  # the header alone gives every tensor's shape: check them all without reading the weights
            with safe_open(str(weights[0]), "pt") as f:
                header = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise InputError(f"unreadable safetensors file: {e}", weights[0]) from None
        checked_hf_state(header, args, path, weights[0])
    _check_vocab(spec_s, args, vocab_size)
    return args


def _check_vocab(spec: str, args: ModelArgs, vocab_size: int | None) -> None:
    """A checkpoint must cover the tokenizer's vocabulary (presets take the tokenizer's instead)."""
    if vocab_size is not None and vocab_size > args.vocab_size:
        raise UsageError(
            f"the tokenizer has {vocab_size} tokens but the seed model {spec} only "
            f"{args.vocab_size}: use the seed's own tokenizer"
        )
