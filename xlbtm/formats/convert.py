"""Convert a model between xlbtm, metaseq / fairseq and Hugging Face: one reader per source, one writer per
target, and `convert` joining them (what `python -m xlbtm.scripts.convert --from X --to Y` runs).

    sources: hf (config.json + safetensors / bin), metaseq and fairseq (single file, FSDP shards and/or
             model-parallel parts, fairseq XLM-R model.pt), xlbtm (consolidated.pt)
    targets: hf, metaseq and xlbtm (both write consolidated.pt: metaseq's layout with the xlbtm header, so
             metaseq tooling and xlbtm both read it)

Every reader goes through xlbtm's safe loaders (nothing is unpickled beyond tensors and plain values).
"""

from __future__ import annotations

import os
from pathlib import Path

from xlbtm.errors import InputError, UsageError
from xlbtm.formats.consolidated import load_consolidated, save_consolidated
from xlbtm.formats.hf import load_hf, save_hf
from xlbtm.formats.layout import consolidated_path
from xlbtm.formats.metaseq import is_shard_name, metaseq_to_xlbtm
from xlbtm.io import atomic_dir, check_replaceable, output_owner, refuse_overlap, write_output_record
from xlbtm.models.config import ModelArgs
from xlbtm.models.safe_load import safe_torch_load
from xlbtm.runtime import resolve_dtype
from xlbtm.tokenizer import load_tokenizer

SOURCES = ("hf", "metaseq", "fairseq", "xlbtm")
TARGETS = ("hf", "metaseq", "xlbtm")


def torch_dtype(name: str | None):
    """`--dtype` of convert / consolidate -> a torch dtype (None / "keep": as stored); any spelling of
    `xlbtm.runtime.resolve_dtype` (fp32 | float32, bf16 | bfloat16, fp16 | float16)."""
    if name is None or str(name).strip().lower() == "keep":
        return None
    return resolve_dtype(name)


def detect_format(path: Path) -> tuple[str, Path]:
    """("hf" | "xlbtm" | "metaseq", what to read) for a model path; a dir holding consolidated.pt reads that."""
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", path
    if path.is_dir() and (path / "consolidated.pt").is_file():
        path = path / "consolidated.pt"
    if path.is_file() and not (path.suffix == ".pt" and is_shard_name(path.name)):
        ck = safe_torch_load(path)  # (shards are never whole xlbtm files: not loaded twice)
        if isinstance(ck, dict) and isinstance(ck.get("xlbtm"), dict):
            return "xlbtm", path
    return "metaseq", path


def read_model(kind: str, path: str | os.PathLike, model_size: str | None = None) -> tuple[dict, ModelArgs, dict]:
    """(xlbtm state dict, ModelArgs, provenance) of the model at `path` in format `kind`."""
    path = Path(path)
    if kind == "hf" or (kind == "xlbtm" and path.is_dir() and (path / "config.json").is_file()):
        sd, args = load_hf(path)
        return sd, args, {"source": str(path), "source_format": "hf"}
    if kind in ("metaseq", "fairseq"):
        sd, args, info = metaseq_to_xlbtm(path, model_size=model_size)
        return (
            sd,
            args,
            {
                "source": str(path),
                "source_format": info["kind"],
                "model_parts": info["model_parts"],
                "shards": info["shards"],
                "files": len(info["files"]),
            },
        )
    if kind == "xlbtm":
        if path.is_dir():  # a run dir (or a merged one): its consolidated.pt
            if not consolidated_path(path).is_file():
                raise InputError(
                    "a directory without consolidated.pt or config.json: give the consolidated.pt file "
                    "(or run `python -m xlbtm.scripts.consolidate` on the run dir first)",
                    path,
                )
            path = consolidated_path(path)
        sd, args, extra = load_consolidated(path)
        return sd, args, extra
    raise UsageError(f"--from must be one of {', '.join(SOURCES)}, got {kind!r}")


def write_model(
    kind: str,
    sd: dict,
    args,
    out: str | os.PathLike,
    *,
    extra: dict | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype=None,
    owner: dict | None = None,
) -> Path:
    """Write `sd` as `kind` at `out`; `owner` (xlbtm.io.output_owner) is recorded beside it, so a rerun with
    the same inputs may replace it and nothing else may. An HF dir is built beside `out` and swapped in whole
    (no files of an earlier export, like its tokenizer, are left mixed with the new ones)."""
    out = Path(out)
    if kind == "hf":
        with atomic_dir(out) as tmp:
            save_hf(sd, args, tmp, tokenizer_dir=tokenizer, dtype=dtype)
            if owner is not None:
                write_output_record(tmp, owner, is_dir=True)
        return out
    if kind in ("metaseq", "xlbtm"):
        if owner is not None:  # before the file: a file without its record would refuse its own rerun
            write_output_record(out, owner, is_dir=False)
        return Path(save_consolidated(out, sd, args, extra=extra, dtype=dtype))
    raise UsageError(f"--to must be one of {', '.join(TARGETS)}, got {kind!r}")


def convert_owner(path: str | os.PathLike, tokenizer: str | os.PathLike | None) -> dict:
    """Whose output a converted model is: convert of this --input (and --tokenizer), the rule of
    `xlbtm.io.check_replaceable` (--from / --to / --dtype are settings: rerunning with another is allowed)."""
    return output_owner("convert", {"--input": path, "--tokenizer": tokenizer})


def convert(
    source: str,
    path: str | os.PathLike,
    target: str,
    out: str | os.PathLike,
    *,
    model_size: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: str | None = None,
    arch: str | None = None,
) -> tuple[ModelArgs, Path, dict]:
    """Read `path` as `source`, write it to `out` as `target`; `arch` refuses another architecture.
    Returns (ModelArgs, the written path, provenance)."""
    if source not in SOURCES:
        raise UsageError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    if target not in TARGETS:
        raise UsageError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}")
    refuse_overlap({"--out": out}, {"--input": path, "--tokenizer": tokenizer})
    # before reading anything: another run's consolidated.pt or HF dir at --out is not ours to replace
    owner = convert_owner(path, tokenizer)
    check_replaceable(out, "--out", owner, is_dir=target == "hf")
    if tokenizer is not None:
        load_tokenizer(tokenizer)  # a bad --tokenizer fails now, not after the weights are read
    sd, args, extra = read_model(source, path, model_size)
    if arch is not None and args.arch != arch:
        raise InputError(f"this is a {args.arch} checkpoint, not {arch}; drop --arch or convert another file", path)
    written = write_model(
        target, sd, args, out, extra=extra, tokenizer=tokenizer, dtype=torch_dtype(dtype), owner=owner
    )
    return args, written, extra
