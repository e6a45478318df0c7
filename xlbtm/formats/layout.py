"""Where the experts of a serialization dir live (contract 5): the one owner of these paths and names.

    <serialization_dir>/<K>_clusters/                  RunLayout.of(serialization_dir, K).root
        <run_name>.cluster<k>/                         .run_dir(run_name, k): one expert's run dir
            expert.json                                what this expert is (formats/expert.py)
            checkpoints/                               DCP checkpoints, `latest` (formats/checkpoints.py)
            train_log.jsonl                            one JSON object per logged step / validation
            consolidated.pt, hf/                       after consolidation (formats/consolidated.py, hf.py)
        logs/                                          .logs_dir: submitit stdout/stderr of the training jobs
        data-bin/<data_name>.<tokenizer fp[:12]>/      .binarized_dir(data_name, tok_fp): the binarized data
        grown/<clusterer fp[:12]>/                     .grown_dir(fp): add_experts' work dir (its cluster
                                                       files and data-bin/), laid out like a root

`consolidated_path`, `hf_dir`, `checkpoints_dir` and `train_log_path` name a run dir's files (a merged model
or a consolidated metaseq dir uses the same names). Experts are listed by `list_experts`, ordered by their
expert.json's (num_clusters, cluster), never by folder name: `cluster10` sorts before `cluster2`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from xlbtm.formats.checkpoints import checkpoint_root
from xlbtm.formats.expert import EXPERT_JSON, ExpertInfo, read_expert_info

CONSOLIDATED = "consolidated.pt"
HF_DIR = "hf"
TRAIN_LOG = "train_log.jsonl"
LOGS = "logs"
DATA_BIN = "data-bin"
GROWN = "grown"


@dataclass(frozen=True)
class RunLayout:
    """The experts root of one K (`<serialization_dir>/<K>_clusters`, or any dir given as `--experts-dir`)."""

    root: Path

    @classmethod
    def of(cls, serialization_dir: str | os.PathLike, num_clusters: int) -> RunLayout:
        return cls(Path(serialization_dir) / f"{num_clusters}_clusters")

    def run_dir(self, run_name: str, cluster: int) -> Path:
        return self.root / f"{run_name}.cluster{cluster}"

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS

    @property
    def data_bin(self) -> Path:
        return self.root / DATA_BIN

    def binarized_dir(self, data_name: str | None, tok_fingerprint: str) -> Path:
        return self.data_bin / f"{data_name or 'data'}.{tok_fingerprint[:12]}"

    def grown_dir(self, clusterer_fingerprint: str) -> Path:
        return self.root / GROWN / clusterer_fingerprint[:12]

    def experts(self) -> list[FoundExpert]:
        return list_experts(self.root)


def consolidated_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONSOLIDATED


def hf_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / HF_DIR


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return checkpoint_root(run_dir)


def train_log_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / TRAIN_LOG


class FoundExpert(NamedTuple):
    run_dir: Path
    info: ExpertInfo


def list_experts(root: str | os.PathLike) -> list[FoundExpert]:
    """The expert run dirs below `root` (or `root` itself, when it is one) with their expert.json, ordered by
    (num_clusters, cluster), then path."""
    root = Path(root)
    if (root / EXPERT_JSON).is_file():
        return [FoundExpert(root, read_expert_info(root))]
    found = [FoundExpert(p.parent, read_expert_info(p.parent)) for p in root.rglob(EXPERT_JSON)]
    return sorted(found, key=lambda e: (e.info.num_clusters, e.info.cluster, str(e.run_dir)))


def find_expert_dirs(root: str | os.PathLike) -> list[Path]:
    """The run dirs of `list_experts(root)`, in its order."""
    return [e.run_dir for e in list_experts(root)]
