"""Expert run directories (contract 5): `<serialization_dir>/<K>_clusters/<run>.cluster<i>/`, laid out by
`xlbtm.formats.layout` (RunLayout: the paths; list_experts / find_expert_dirs: the experts below a dir, ordered
by expert.json's cluster, never by folder name). This module adds the run's lock:

    .lock                  held (flock) by the process training the run; names its host / pid / job id
"""

from __future__ import annotations

import os
from pathlib import Path

from xlbtm.formats.expert import read_expert_info  # noqa: F401  (re-exported)
from xlbtm.formats.layout import RunLayout, find_expert_dirs  # noqa: F401  (find_expert_dirs: re-exported)
from xlbtm.formats.lock import LOCK, DirLock  # noqa: F401  (LOCK: re-exported)


def expert_run_dir(serialization_dir: str | os.PathLike, num_clusters: int, run_name: str, cluster: int) -> Path:
    return RunLayout.of(serialization_dir, num_clusters).run_dir(run_name, cluster)


class RunLock(DirLock):
    """The exclusive right to train one run dir, so a second trainer on the same dir (a job submitted twice,
    a forgotten `--run local`) stops with a message instead of interleaving steps with the first and pruning
    its checkpoints. `<run_dir>/.lock` (`xlbtm.formats.lock`): the kernel drops it when the holder dies, so a
    requeued or rerun job never finds a stale lock."""

    def __init__(self, run_dir: str | os.PathLike, what: str = "being trained"):
        super().__init__(run_dir, what)
