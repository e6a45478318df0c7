"""expert.json: what one expert is (contract 5) -- its cluster, objective, model args, tokenizer, seed and the
config it was trained with. Written atomically by the trainer when the run starts; read by training (resume),
consolidation and evaluation, always through `read_expert_info`.

Version: `format` is "xlbtm-expert/1"; fields added later are optional (`data`, `init`, `seed_identity`), so older
files still read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from xlbtm.errors import InputError
from xlbtm.io import read_json, write_json

FORMAT = "xlbtm-expert/1"
EXPERT_JSON = "expert.json"
OPTIONAL = ("data", "init", "seed_identity")  # fields added after the first release: older files lack them


@dataclass
class ExpertInfo:
    cluster: int
    num_clusters: int
    clusterer_fingerprint: str | None  # None for the dense baseline (K=1)
    objective: str  # "clm" | "mlm": how it is scored (TLM-trained: "mlm"; see data.config)
    model_args: dict  # ModelArgs.to_dict()
    tokenizer: str  # absolute path of the HF tokenizer dir
    tokenizer_fingerprint: str
    seed_model: str
    run_name: str
    data: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)  # a grown expert's start: {"method", "parent", ...} (add_experts)
    # what the initial weights were (`xlbtm.formats.seed.seed_identity`): `seed_model` is only the string the
    # user typed, and "debug" with --seed 1 and with --seed 7 are different initializations. None: written
    # before it was recorded
    seed_identity: str | None = None
    format: str = FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format": d.pop("format"), **d}

    @classmethod
    def from_dict(cls, d: dict, path=None) -> ExpertInfo:
        if d.get("format") != FORMAT:
            raise InputError(f"not an xlbtm expert.json (format {d.get('format')!r}, expected {FORMAT!r})", path)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in names if n not in d and n not in OPTIONAL]
        if missing:
            raise InputError(f"expert.json lacks {', '.join(sorted(missing))}", path)
        return cls(**{k: v for k, v in d.items() if k in names})


def write_expert_info(run_dir: str | os.PathLike, info: ExpertInfo) -> Path:
    path = Path(run_dir) / EXPERT_JSON
    write_json(path, info.to_dict())
    return path


def read_expert_info(run_dir: str | os.PathLike) -> ExpertInfo:
    path = Path(run_dir) / EXPERT_JSON
    if not path.is_file():
        raise InputError("expert.json not found: not an expert run directory", path)
    return ExpertInfo.from_dict(read_json(path), path)
