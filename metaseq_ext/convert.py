"""Deprecated alias (one release): the metaseq reader lives in `xlbtm.formats.metaseq`."""

from xlbtm.formats.metaseq import args_from_metaseq, metaseq_to_xlbtm  # noqa: F401
