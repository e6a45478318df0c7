"""Deprecated alias (kept for a release): `python -m xlbtm.scripts.convert --from metaseq --to hf`, same flags."""

from xlbtm.scripts.convert import deprecated_alias

main = deprecated_alias(__name__, {"--from": "metaseq", "--to": "hf"})
