"""metaseq/fairseq checkpoint (FSDP shards `<prefix>-model_part-M-shardN.pt`, model-parallel parts,
or one file) -> a single consolidated.pt (metaseq layout + xlbtm model args), usable as --seed-model."""

from __future__ import annotations

from conversion._common import add_dtype_arg, make_parser, report, torch_dtype
from xlbtm.cli import get_logger, run_script


def build_parser():
    p = make_parser("metaseq_to_xlbtm", __doc__)
    p.add_argument("--checkpoint", required=True, help="a .pt file, one shard, the shard prefix, or a directory")
    p.add_argument("--out", required=True, help="output consolidated.pt")
    p.add_argument("--model-size", default=None, help="preset giving the architecture when the checkpoint has no cfg")
    add_dtype_arg(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from xlbtm.formats.consolidated import save_consolidated
    from metaseq_ext.convert import metaseq_to_xlbtm

    sd, args, info = metaseq_to_xlbtm(a.checkpoint, model_size=a.model_size)
    save_consolidated(a.out, sd, args, extra={"source": str(a.checkpoint), "source_format": info["kind"],
                                              "model_parts": info["model_parts"], "shards": info["shards"]},
                      dtype=torch_dtype(a.dtype))
    report(get_logger("convert"), f"consolidated checkpoint from {len(info['files'])} file(s)", args, a.out)


if __name__ == "__main__":
    run_script("convert", main)
