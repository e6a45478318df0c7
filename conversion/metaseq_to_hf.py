"""metaseq/fairseq checkpoint (XGLM or XLM-R; single file, FSDP shards and/or model-parallel parts)
-> Hugging Face directory (config.json + model.safetensors [+ tokenizer])."""

from __future__ import annotations

from conversion._common import add_dtype_arg, make_parser, report, torch_dtype
from xlbtm.cli import get_logger, run_script

ARCH: str | None = None  # set by conversion.xlmr_to_hf


def build_parser():
    p = make_parser("metaseq_to_hf", __doc__)
    p.add_argument("--checkpoint", required=True,
                   help="a .pt file, one shard of <prefix>-model_part-M-shardN.pt, the <prefix>, or a directory")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer dir (HF, or metaseq/fairseq with sentencepiece.bpe.model) to save alongside")
    p.add_argument("--model-size", default=None,
                   help="preset giving the architecture when the checkpoint has no cfg (e.g. xglm-564M)")
    add_dtype_arg(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from metaseq_ext.convert import metaseq_to_xlbtm
    from xlbtm.errors import InputError
    from xlbtm.models.hf import save_hf

    sd, args, info = metaseq_to_xlbtm(a.checkpoint, model_size=a.model_size)
    if ARCH is not None and args.arch != ARCH:
        raise InputError(f"this is a {args.arch} checkpoint, not {ARCH}; use conversion.metaseq_to_hf", a.checkpoint)
    save_hf(sd, args, a.out, tokenizer_dir=a.tokenizer, dtype=torch_dtype(a.dtype))
    report(get_logger("convert"), f"{info['kind']} checkpoint ({len(info['files'])} file(s))", args, a.out)


if __name__ == "__main__":
    run_script("convert", main)
