"""xlbtm checkpoint (consolidated.pt, or a Hugging Face dir) -> metaseq consolidated.pt
(`model` with unfused decoder.* / encoder.sentence_encoder.* keys, `cfg` with the model args)."""

from __future__ import annotations

from pathlib import Path

from conversion._common import add_dtype_arg, make_parser, report, torch_dtype
from xlbtm.cli import get_logger, run_script


def build_parser():
    p = make_parser("xlbtm_to_metaseq", __doc__)
    p.add_argument("--checkpoint", required=True, help="xlbtm consolidated.pt or Hugging Face directory")
    p.add_argument("--out", required=True, help="output metaseq consolidated .pt")
    add_dtype_arg(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from xlbtm.formats.consolidated import load_consolidated, save_consolidated
    from xlbtm.models.hf import load_hf

    src = Path(a.checkpoint)
    if src.is_dir():
        sd, args = load_hf(src)
        extra = {}
    else:
        sd, args, extra = load_consolidated(src)
    save_consolidated(a.out, sd, args, extra=extra, dtype=torch_dtype(a.dtype))
    report(get_logger("convert"), "metaseq consolidated checkpoint", args, a.out)


if __name__ == "__main__":
    run_script("convert", main)
