"""Hugging Face directories: write (config.json + model.safetensors [+ tokenizer]) and read them.

Both directions work on state dicts without instantiating the transformers model, so a 7.5B export
needs one copy of the weights in memory. The written directory loads with
`XGLMForCausalLM.from_pretrained` / `XLMRobertaForMaskedLM.from_pretrained` (tested for logit parity).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from xlbtm.errors import InputError
from xlbtm.io import atomic_open, atomic_path, read_json
from xlbtm.models.adapters import args_from_hf_config, hf_config, hf_key, hf_to_xlbtm, xlbtm_to_hf
from xlbtm.models.config import ModelArgs
from xlbtm.models.load import check_state_fits, own_storage
from xlbtm.models.safe_load import safe_torch_load
from xlbtm.tokenizer import load_tokenizer


def save_hf(
    model_or_state,
    args: ModelArgs,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a transformers model directory for an xlbtm model (or its state dict).

    tokenizer_dir: an HF tokenizer dir or a metaseq/fairseq dir with `sentencepiece.bpe.model`; it is
    loaded with xlbtm.tokenizer.load_tokenizer and saved next to the weights.
    """
    from safetensors.torch import save_file

    sd = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else dict(model_or_state)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        tok = load_tokenizer(tokenizer_dir)
        if tok.vocab_size > args.vocab_size:
            raise InputError(
                f"tokenizer has {tok.vocab_size} tokens but the model only {args.vocab_size}", tokenizer_dir
            )
        tok.hf.save_pretrained(str(out))
    cfg = hf_config(args)
    if dtype is not None:
        cfg.dtype = dtype
    with atomic_open(out / "config.json") as f:
        f.write(cfg.to_json_string(use_diff=False))
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(own_storage(xlbtm_to_hf(sd, args)), str(tmp), metadata={"format": "pt"})
    return out


# what a Hugging Face dir may hold its weights in, in the order they are looked for
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def _load_safetensors(path: Path) -> dict:
    """One safetensors file's tensors; a truncated or foreign file is an InputError, not safetensors' traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError("weights file not found (named by the directory's index)", path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or ["no message"])[0][:200]
        raise InputError(
            f"unreadable safetensors file ({first}): it is truncated or not a safetensors file; copy or export "
            "the Hugging Face directory again",
            path,
        ) from None


def _read_weights(path: Path) -> tuple[dict, Path]:
    """(the directory's HF-named tensors, the file they came from: the weights file or the shards' index)."""
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors"), path / "model.safetensors"
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", safe_torch_load),
    ):
        index = path / index_name
        if index.is_file():
            meta = read_json(index)
            weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise InputError("no 'weight_map' of tensor name -> file name in this index", index)
            sd: dict[str, torch.Tensor] = {}
            for f in sorted(set(weight_map.values())):
                sd.update(loader(path / f))
            return sd, index
    if (path / "pytorch_model.bin").is_file():
        return safe_torch_load(path / "pytorch_model.bin"), path / "pytorch_model.bin"
    raise InputError("no model.safetensors, pytorch_model.bin or sharded index found", path)


def read_hf_args(path: str | os.PathLike) -> ModelArgs:
    """The ModelArgs of a transformers XGLM / XLM-R directory, from its config.json alone."""
    path = Path(path)
    if not path.is_dir():
        what = "a file" if path.exists() else "not found"
        raise InputError(
            f"not a Hugging Face directory ({what}); give the directory holding config.json, or for a .pt "
            "checkpoint use --from xlbtm (consolidated.pt) or --from metaseq",
            path,
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError("not a Hugging Face directory: it has no config.json", path)
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise InputError(f"config.json holds a {type(cfg).__name__}, not a JSON object", cfg_path)
    try:
        return args_from_hf_config(cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"unsupported config.json: {e}", cfg_path) from None


def load_hf(path: str | os.PathLike) -> tuple[dict, ModelArgs]:
    """(xlbtm_state_dict, args) from a transformers XGLM / XLM-R directory."""
    path = Path(path)
    args = read_hf_args(path)
    hf, weights = _read_weights(path)
    return checked_hf_state(hf, args, path, weights), args


def checked_hf_state(hf: dict, args: ModelArgs, path: Path, weights: Path) -> dict:
    """The xlbtm state dict of a directory's HF-named tensors, checked against its config.json's architecture
    (every tensor's shape; `hf` may hold meta tensors, to check a safetensors header without reading data)."""
    try:
        sd = hf_to_xlbtm(hf, args.arch)
    except KeyError as e:
        raise InputError(f"unexpected weight {e.args[0]}", weights) from None
    if args.arch == "xlmr" and "lm_head.dense.weight" not in sd:
        raise InputError(
            "this XLM-R checkpoint has no masked-LM head (lm_head.*); export it from XLMRobertaForMaskedLM", path
        )
    check_state_fits(
        sd,
        args,
        weights,
        name_in_file=lambda k: hf_key(k, args.arch),
        claimed_by=str(path / "config.json"),
        remedy="config.json and the weights come from different models: export the directory again "
        "(save_pretrained) or fix config.json",
    )
    return sd
