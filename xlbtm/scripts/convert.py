"""Convert a model between xlbtm, metaseq / fairseq and Hugging Face formats.

    python -m xlbtm.scripts.convert --from metaseq --to hf --input ckpt/checkpoint_last --out hf/ [--tokenizer T]
    python -m xlbtm.scripts.convert --from hf --to xlbtm --input hf/ --out seed.pt --dtype bf16
    python -m xlbtm.scripts.convert --from fairseq --to hf --arch xlmr --input xlmr/model.pt --out hf/

metaseq sources: a single .pt, one shard of <prefix>-model_part-M-shardN.pt, the <prefix>, or its directory.
`--to metaseq` and `--to xlbtm` both write consolidated.pt (metaseq's layout with xlbtm's header).
"""

from __future__ import annotations

from xlbtm.cli import get_logger, make_parser, run_script
from xlbtm.runtime import dtype_arg

log = get_logger("convert")


def _dtype(text: str) -> str:
    return "keep" if text.strip().lower() == "keep" else dtype_arg(text)


def build_parser(prog: str | None = None):
    from xlbtm.formats.convert import SOURCES, TARGETS

    p = make_parser("convert", __doc__.split("\n\n")[0])
    if prog:
        p.prog = prog
    p.add_argument("--from", dest="source", choices=SOURCES, required=True, help="format of --input")
    p.add_argument("--to", dest="target", choices=TARGETS, required=True, help="format to write")
    p.add_argument(
        "--input",
        "--checkpoint",
        "--hf-dir",
        dest="input",
        required=True,
        help="the model to convert: .pt file / shards / prefix / dir, or a Hugging Face dir",
    )
    p.add_argument("--out", required=True, help="output: a Hugging Face dir (--to hf) or a consolidated .pt")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer dir (HF, or metaseq/fairseq with sentencepiece.bpe.model) to save with --to hf",
    )
    p.add_argument(
        "--model-size",
        default=None,
        help="preset giving the architecture when a metaseq checkpoint has no cfg (e.g. xglm-564M)",
    )
    p.add_argument("--arch", choices=["xglm", "xlmr"], default=None, help="refuse a checkpoint of another architecture")
    p.add_argument(
        "--dtype",
        type=_dtype,
        default="keep",
        help="cast floating-point weights when writing: fp32 | bf16 | fp16 (or float32 | bfloat16 | "
        "float16); keep = as stored",
    )
    return p


def main(argv=None, *, fixed: dict | None = None, prog: str | None = None):
    """`fixed` pins --from / --to / --arch for the deprecated `python -m conversion.<name>` aliases."""
    from xlbtm.formats.convert import convert

    argv = list(argv) if argv is not None else None
    if fixed:
        import sys

        argv = (sys.argv[1:] if argv is None else argv) + [x for k, v in fixed.items() for x in (k, v)]
    a = build_parser(prog).parse_args(argv)
    args, out, extra = convert(
        a.source, a.input, a.target, a.out, model_size=a.model_size, tokenizer=a.tokenizer, dtype=a.dtype, arch=a.arch
    )
    log.info(
        f"wrote {a.target} ({args.arch}, d={args.d_model}, {args.n_layers} layers, vocab {args.vocab_size}) "
        f"from {extra.get('source_format', a.source)} -> {out}"
    )
    return 0


def deprecated_alias(module: str, fixed: dict):
    """`main` of a deprecated `python -m conversion.<name>` (= this command with `fixed` flags pinned); runs it
    when that module is run as a script (`module` is its `__name__`, `__spec__.name` names it in --help)."""
    import sys

    spec = sys.modules[module].__spec__
    name = spec.name if spec is not None else module

    def alias_main(argv=None):
        return main(argv, fixed=fixed, prog=f"python -m {name}")

    if module == "__main__":
        run_script("convert", alias_main)
    return alias_main


if __name__ == "__main__":
    run_script("convert", main)
