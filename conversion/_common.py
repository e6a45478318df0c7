"""Flags shared by the converter CLIs."""

from __future__ import annotations

import argparse

DTYPES = {"keep": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    from xlbtm.cli import make_parser as _make

    p = _make("convert", description)
    p.prog = f"python -m conversion.{name}"
    return p


def add_dtype_arg(p: argparse.ArgumentParser, default: str = "keep") -> None:
    p.add_argument("--dtype", choices=list(DTYPES), default=default,
                   help="cast floating-point weights when writing (keep = as stored)")


def torch_dtype(name: str):
    import torch

    return None if DTYPES[name] is None else getattr(torch, DTYPES[name])


def report(log, what: str, args, out) -> None:
    log.info("wrote %s (%s, d=%d, %d layers, vocab %d) -> %s", what, args.arch, args.d_model, args.n_layers,
             args.vocab_size, out)
