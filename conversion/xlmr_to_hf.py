"""Deprecated alias (kept for a release): `python -m xlbtm.scripts.convert --from fairseq --to hf`, same flags."""

from xlbtm.cli import run_script
from xlbtm.scripts.convert import main as _convert


def main(argv=None):
    return _convert(argv, fixed={"--from": "fairseq", "--to": "hf", "--arch": "xlmr"},
                    prog="python -m conversion.xlmr_to_hf")


if __name__ == "__main__":
    run_script("convert", main)
