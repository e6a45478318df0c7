"""Hugging Face XGLM / XLM-R directory -> xlbtm seed checkpoint (consolidated.pt, metaseq layout)."""

from __future__ import annotations

from conversion._common import add_dtype_arg, make_parser, report, torch_dtype
from xlbtm.cli import get_logger, run_script


def build_parser():
    p = make_parser("hf_to_xlbtm", __doc__)
    p.add_argument("--hf-dir", required=True, help="directory with config.json and model.safetensors")
    p.add_argument("--out", required=True, help="output consolidated.pt")
    add_dtype_arg(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from xlbtm.formats.consolidated import save_consolidated
    from xlbtm.models.hf import load_hf

    sd, args = load_hf(a.hf_dir)
    save_consolidated(a.out, sd, args, extra={"source": str(a.hf_dir), "source_format": "hf"},
                      dtype=torch_dtype(a.dtype))
    report(get_logger("convert"), "xlbtm seed", args, a.out)


if __name__ == "__main__":
    run_script("convert", main)
