"""Deprecated alias (kept for a release): `python -m xlbtm.scripts.convert --from metaseq --to xlbtm`, same flags."""

from xlbtm.cli import run_script
from xlbtm.scripts.convert import main as _convert


def main(argv=None):
    return _convert(argv, fixed={"--from": "metaseq", "--to": "xlbtm"}, prog="python -m conversion.metaseq_to_xlbtm")


if __name__ == "__main__":
    run_script("convert", main)
