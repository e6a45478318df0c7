"""Consolidation (pipeline step 4): one expert's checkpoint -> consolidated.pt (+ an HF dir).

    consolidate(path, dtype=None, hf=False) -> dict of written paths

`path` is either
  - an xlbtm expert run dir: the latest DCP checkpoint (`checkpoints/latest`) is read in one process, model
    tensors only (no optimizer state), and written as `<run>/consolidated.pt` in metaseq's layout
    (`model` with unfused `decoder.*` keys, `cfg` with the model args) via xlbtm.formats.consolidated;
    `hf=True` also writes `<run>/hf/` (weights + config + the expert's tokenizer);
  - a metaseq/c-BTM checkpoint (sharded `checkpoint_last-model_part-0-shard0.pt` files, a prefix or their
    directory): FSDP shards and model-parallel parts are joined by xlbtm.formats.metaseq and written as
    `<dir>/consolidated.pt`.
"""

from __future__ import annotations

import os
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.errors import InputError
from xlbtm.formats.checkpoints import latest_checkpoint
from xlbtm.formats.consolidated import load_consolidated, save_consolidated
from xlbtm.formats.convert import torch_dtype
from xlbtm.formats.expert import EXPERT_JSON, read_expert_info
from xlbtm.formats.hf import save_hf
from xlbtm.formats.layout import consolidated_path, hf_dir
from xlbtm.formats.metaseq import find_checkpoint_files, metaseq_to_xlbtm
from xlbtm.io import atomic_dir, check_replaceable, output_owner, write_output_record
from xlbtm.models import ModelArgs
from xlbtm.models.load import check_state_fits
from xlbtm.parallel.checkpoint import read_model_state

log = get_logger("consolidate")

# wrappers that torch.compile / activation checkpointing may leave in parameter names
_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def clean_keys(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for w in _WRAPPER_PARTS:
            k = k.replace(w, "")
        out[k] = v
    return out


def consolidate(path: str | os.PathLike, dtype: str | None = None, hf: bool = False) -> dict[str, Path]:
    path = Path(path)
    if (path / EXPERT_JSON).is_file():
        return consolidate_expert(path, dtype, hf)
    if path.exists() or path.parent.is_dir():
        return consolidate_metaseq(path, dtype, hf)
    raise InputError("not found (expected an expert run dir or a metaseq checkpoint)", path)


def consolidate_expert(run_dir: str | os.PathLike, dtype: str | None = None, hf: bool = False) -> dict[str, Path]:
    run_dir = Path(run_dir)
    info = read_expert_info(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise InputError("no finished checkpoint (checkpoints/latest is missing); nothing to consolidate", run_dir)
    args = ModelArgs.from_dict(info.model_args)
    # the run's consolidated.pt and hf/ are its own slots, always rebuilt from its own expert.json and latest
    # checkpoint: replacing them needs no output record (convert and merge refuse to write there)
    state = clean_keys(read_model_state(ckpt))
    # the state must fit the model expert.json describes, or every reader downstream fails later and vaguer
    check_state_fits(
        state,
        args,
        ckpt,
        claimed_by=str(run_dir / EXPERT_JSON),
        remedy="this checkpoint is not the run expert.json describes: consolidate the run dir it belongs to",
    )
    td = torch_dtype(dtype)
    out = {"consolidated": consolidated_path(run_dir)}
    extra = {"expert": info.to_dict(), "step": ckpt.name, "source": str(ckpt)}
    save_consolidated(out["consolidated"], state, args, extra=extra, dtype=td)
    log.info(f"{run_dir}: {ckpt.name} -> {out['consolidated']}")
    if hf:
        out["hf"] = _save_hf(state, args, hf_dir(run_dir), info.tokenizer, td)
    return out


def consolidate_metaseq(path: Path, dtype: str | None = None, hf: bool = False) -> dict[str, Path]:
    """A metaseq checkpoint's shards -> `<dir>/consolidated.pt` (+ `<dir>/hf/`). The outputs sit beside the
    user's files, so an existing one is replaced only when it is consolidate's own earlier output of these
    shards (`xlbtm.io.check_replaceable`); a dir whose only checkpoint is consolidated.pt is not rewritten."""
    files = find_checkpoint_files(path)
    first = files[min(files)][min(files[min(files)])]
    d = path if path.is_dir() else path.parent
    out = {"consolidated": consolidated_path(d)}
    only_itself = first.resolve() == out["consolidated"].resolve()
    owner = output_owner("consolidate", {"checkpoint": first})
    if not only_itself:
        check_replaceable(out["consolidated"], "output", owner, is_dir=False, legacy=_consolidated_from(first))
    if hf:
        check_replaceable(
            hf_dir(d), "output", owner, is_dir=True, legacy=lambda _: _consolidated_from(first)(out["consolidated"])
        )
    state, args, info = metaseq_to_xlbtm(path)
    td = torch_dtype(dtype)
    if only_itself:  # reading it and writing it back would change nothing but the risk
        log.info(f"{path}: already consolidated ({out['consolidated']})")
    else:
        write_output_record(out["consolidated"], owner, is_dir=False)
        save_consolidated(out["consolidated"], state, args, extra={"source": info}, dtype=td)
        log.info(
            f"{path}: {info.get('model_parts')} model part(s) x {info.get('shards')} shard(s) -> {out['consolidated']}"
        )
    if hf:
        tok = d if (d / "sentencepiece.bpe.model").is_file() or (d / "tokenizer.json").is_file() else None
        if tok is None:
            log.warning(f"no tokenizer beside {path}; {hf_dir(d)} gets weights and config only")
        out["hf"] = _save_hf(state, args, hf_dir(d), tok, td, owner=owner)
    return out


def _consolidated_from(first: Path):
    """`legacy` of check_replaceable for outputs written before output records: a consolidated.pt whose header
    says consolidate read this checkpoint (its `source.files` start with `first`)."""

    def earlier(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            source = (load_consolidated(path)[2] or {}).get("source")
        except InputError:
            return False
        files = source.get("files") if isinstance(source, dict) else None
        if not isinstance(files, list) or not files or not isinstance(files[0], str):
            return False
        return Path(files[0]).resolve() == first.resolve()

    return earlier


def _save_hf(state, args, out_dir: Path, tokenizer_dir, dtype, owner: dict | None = None) -> Path:
    """The run's `hf/` is xlbtm's own: built in a temporary dir and swapped in whole, so a crash or a full disk
    never leaves a config without weights (or the old weights with a new config) for transformers to load.
    `owner`: recorded inside (`xlbtm.io.write_output_record`) where the dir is not a run's own slot."""
    with atomic_dir(out_dir) as tmp:
        save_hf(state, args, tmp, tokenizer_dir=tokenizer_dir, dtype=dtype)
        if owner is not None:
            write_output_record(tmp, owner, is_dir=True)
    log.info(f"hf -> {out_dir}")
    return Path(out_dir)
