"""Deprecated alias (one release): the metaseq reader lives in `xlbtm.formats.metaseq`."""

from xlbtm.formats.metaseq import (  # noqa: F401
    MetaseqCheckpoint,
    consolidate_shard_weights,
    find_checkpoint_files,
    glue_model_parallel,
    is_shard_name,
    load_metaseq_checkpoint,
)
