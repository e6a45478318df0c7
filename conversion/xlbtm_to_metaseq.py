"""Deprecated alias (kept for a release): `python -m xlbtm.scripts.convert --from xlbtm --to metaseq`, same flags."""

from xlbtm.scripts.convert import deprecated_alias

main = deprecated_alias(__name__, {"--from": "xlbtm", "--to": "metaseq"})
