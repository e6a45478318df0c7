"""Deprecated alias (kept for a release): `python -m xlbtm.scripts.convert --from xlbtm --to metaseq`, same flags."""

from xlbtm.cli import run_script
from xlbtm.scripts.convert import main as _convert


def main(argv=None):
    return _convert(argv, fixed={"--from": "xlbtm", "--to": "metaseq"}, prog="python -m conversion.xlbtm_to_metaseq")


if __name__ == "__main__":
    run_script("convert", main)
