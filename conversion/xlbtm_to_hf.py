"""xlbtm consolidated.pt (an expert or a seed) -> Hugging Face directory (save_pretrained layout,
safetensors), with the tokenizer when given."""

from __future__ import annotations

from conversion._common import add_dtype_arg, make_parser, report, torch_dtype
from xlbtm.cli import get_logger, run_script


def build_parser():
    p = make_parser("xlbtm_to_hf", __doc__)
    p.add_argument("--checkpoint", required=True, help="consolidated.pt (xlbtm or metaseq)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to save alongside the weights")
    add_dtype_arg(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from xlbtm.formats.consolidated import load_consolidated
    from xlbtm.models.hf import save_hf

    sd, args, _ = load_consolidated(a.checkpoint)
    save_hf(sd, args, a.out, tokenizer_dir=a.tokenizer, dtype=torch_dtype(a.dtype))
    report(get_logger("convert"), "Hugging Face model", args, a.out)


if __name__ == "__main__":
    run_script("convert", main)
