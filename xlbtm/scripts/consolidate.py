"""Consolidate one expert: latest DCP checkpoint -> consolidated.pt (metaseq layout), optionally an HF dir.

    python -m xlbtm.scripts.consolidate SERIALIZATION/8_clusters/run.cluster3 --dtype fp16 --hf

Also accepts a metaseq/c-BTM sharded checkpoint (`checkpoint_last-model_part-0-shard0.pt` files, their
prefix or directory). Many experts at once: scripts/consolidate_fsdp_shards.sh SERIALIZATION "PATTERN".
"""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.runtime import dtype_arg


def build_parser():
    p = make_parser("consolidate", __doc__.split("\n\n")[0])
    p.add_argument(
        "expert_dir",
        metavar="EXPERT_DIR",
        help="expert run dir (with expert.json and checkpoints/), or a metaseq checkpoint",
    )
    p.add_argument(
        "--dtype",
        type=dtype_arg,
        default=None,
        help="cast floating tensors: fp16 | bf16 | fp32 (or float16 | bfloat16 | float32; default: keep "
        "the checkpoint's dtype)",
    )
    p.add_argument("--hf", action="store_true", help="also write a Hugging Face dir (`hf/`) with the tokenizer")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from xlbtm.ensemble.consolidate import consolidate

    out = consolidate(args.expert_dir, dtype=args.dtype, hf=args.hf)
    for kind, path in out.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    run_script("consolidate", main)
