"""The configuration of ONE expert's training run (what `train_experts` builds per cluster)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(kw_only=True)
class TrainingSettings:
    """How every expert of a run is trained: the settings `train_experts` takes as flags of the same names
    (`--learning-rate` -> learning_rate), with their defaults. Both `TrainConfig` (one expert's run) and
    `xlbtm.train.experts.TrainExpertsRequest` (the command) extend it, so each setting and its default exist
    once, and the request hands them to each expert's config by name."""

    train_subset: str = "train"
    valid_subset: str = "valid"
    tokens_per_sample: int = 2048
    batch_size: int = 8                   # per data-parallel rank, per micro-step (c-BTM --batch-size)
    update_freq: int = 1                  # micro-steps accumulated per optimizer step
    learning_rate: float = 2e-4
    end_learning_rate: float = 0.0
    warmup_updates: int = 0
    power: float = 1.0                    # polynomial decay exponent (1 = linear)
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-6
    clip_norm: float = 1.0                # 0 disables clipping
    dropout: float | None = None          # override the seed's dropout (None = keep)
    seed: int = 1
    tensor_parallel_size: int = 1
    activation_checkpointing: bool = False
    compile: bool = False
    save_interval_updates: int = 1000
    validate_interval_updates: int = 1000
    max_valid_samples: int | None = None  # cap on validation samples (None = the whole valid split)
    keep_checkpoints: int = 2
    sync_checkpoints: bool = False        # True: training waits for each checkpoint (default: async save)
    log_interval: int = 10
    tensorboard: bool = False


@dataclass(kw_only=True)
class TrainConfig(TrainingSettings):
    """ONE expert's run: the shared settings plus what the launcher resolved for this expert."""

    run_dir: str                          # <serialization_dir>/<K>_clusters/<run>.cluster<i>
    data_dir: str                         # binarized dir (xlbtm.data.binarize layout)
    seed_model: str                       # HF dir | metaseq/fairseq .pt | consolidated.pt | preset name
    cluster: int = 0
    num_clusters: int = 1
    clusterer_fingerprint: str | None = None
    run_name: str = "run"
    model_size: str | None = None         # preset naming the architecture when the seed does not
    tokenizer: str | None = None
    objective: str = "clm"                # "clm" | "mlm"
    max_steps: int = 1000
    progress_bar: bool | None = None      # None = when stdout is a terminal
    device: str | None = None             # "cuda" | "cpu" | None (cuda when visible)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The inverse of to_dict. An unknown key is an error, not silently dropped: it is a setting this
        version would not apply (a typo, or a config from a newer xlbtm)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            from xlbtm.errors import UsageError

            raise UsageError(f"unknown training setting(s) {', '.join(unknown)}: not a field of TrainConfig "
                             "(written by another xlbtm version?)")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])  # JSON gives a list
        return cls(**d)

    @property
    def tokens_per_step_per_rank(self) -> int:
        return self.batch_size * self.update_freq * self.tokens_per_sample


def check_model_fits(arch: str, max_positions: int, objective: str, tokens_per_sample: int, seed_model: str) -> None:
    """The model can be trained as asked: its architecture matches the objective and a sample fits its
    positions. (Checked by the driver before anything is queued, and again by the trainer.)"""
    from xlbtm.errors import UsageError

    want = {"clm": "xglm", "mlm": "xlmr"}[objective]
    if arch != want:
        raise UsageError(f"--objective {objective} needs a {want} model, but the seed {seed_model} is {arch}")
    if tokens_per_sample > max_positions:
        raise UsageError(f"--tokens-per-sample {tokens_per_sample} exceeds the model's max_positions "
                         f"({max_positions}); lower it to at most {max_positions}")
