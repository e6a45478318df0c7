"""Deprecated alias (kept for a release): `python -m xlbtm.scripts.convert --from fairseq --to hf`, same flags."""

from xlbtm.scripts.convert import deprecated_alias

main = deprecated_alias(__name__, {"--from": "fairseq", "--to": "hf", "--arch": "xlmr"})
