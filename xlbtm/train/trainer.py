"""The `Trainer` of ONE expert on this rank: data, model, optimizer, one step, validation, state, the loop.

Built in order by `Trainer.build` (data -> model -> optimizer -> resume), each piece a method that can be
called and tested alone. Batches, dropout masks and the schedule are functions of (seed, step, global sample
index) -- each sample's masks come from its own seed (`sample_seed`, `xlbtm.models.dropout`) -- so a resumed
run, also at another data-parallel degree, continues with exactly the samples, masks and learning rates an
uninterrupted run would have used (tests/test_train.py and tests/test_parallel.py check both with dropout 0.1).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from xlbtm.cli import get_logger
from xlbtm.data.dataset import (
    CLMDataset,
    MLMDataset,
    MLMTLMDataset,
    PairStream,
    Sampler,
    TLMDataset,
    TokenStream,
    collate,
    rank_indices,
)
from xlbtm.data.prefetch import Prefetcher
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.binarized import bin_path, idx_path, read_binarized_manifest
from xlbtm.formats.checkpoints import latest_checkpoint
from xlbtm.formats.expert import ExpertInfo, read_expert_info, write_expert_info
from xlbtm.formats.pairs import read_pairs_manifest
from xlbtm.formats.seed import seed_identity
from xlbtm.models import ModelArgs, flops_per_token
from xlbtm.models.dropout import sample_seeds
from xlbtm.models.loss import model_loss
from xlbtm.parallel.checkpoint import AsyncCheckpointer, load_newest_readable, save_checkpoint
from xlbtm.parallel.mesh import ParallelDims, build_mesh
from xlbtm.parallel.parallelize import build_loss_fn, parallelize
from xlbtm.runtime import resolve_precision
from xlbtm.tokenizer import load_tokenizer
from xlbtm.train.config import (
    VALID_BATCH_FACTOR,
    TrainConfig,
    check_model_fits,
    model_kind,
    uses_monolingual,
    uses_pairs,
)
from xlbtm.train.metrics import MetricLogger, mfu, peak_flops
from xlbtm.train.optim import build_optimizer, clip_grad_norm, lr_at, set_lr
from xlbtm.train.seeding import materialize, model_on_rank

log = get_logger("train")


@dataclass
class TrainResult:
    status: str  # "completed" | "preempted"
    step: int
    run_dir: str
    valid_loss: float | None = None


def step_seed(seed: int, step: int, dp_rank: int) -> int:
    """The global RNG's seed for a step (whatever draws from it outside the per-sample dropout)."""
    return int(np.random.SeedSequence([seed, step, dp_rank]).generate_state(1)[0])


def sample_seed(seed: int, global_index: int) -> int:
    """The dropout seed of one training sample (`xlbtm.models.dropout`): a function of the run's seed and
    the sample's global index only, so it is the same at any data-parallel degree and after any resume."""
    return int(np.random.SeedSequence([seed, 0x44524F50, global_index]).generate_state(1)[0])


class Trainer:
    """One expert's training run as seen by this rank (every rank of the process group makes one)."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.dims = ParallelDims.from_world(world, cfg.tensor_parallel_size)
        if cfg.tokens_per_sample % self.dims.tp:
            raise UsageError(
                f"--tokens-per-sample {cfg.tokens_per_sample} must be divisible by "
                f"--tensor-parallel-size {self.dims.tp} (sequence parallelism splits samples evenly)"
            )
        self.mesh = build_mesh(self.dims, device.type)
        self.precision = resolve_precision(cfg.precision, device.type)  # fp32 | bf16-mixed
        self.dp_rank = self.mesh["dp"].get_local_rank()
        self.dp_group = self.mesh["dp"].get_group()
        self.is_main = rank == 0
        self.run_dir = Path(cfg.run_dir)
        self.step, self.position = 0, 0
        self.resumed_from: Path | None = None  # the checkpoint this run continued from
        self._async: AsyncCheckpointer | None = None  # made at the first background save
        self.samples_per_step = cfg.batch_size * self.dims.dp * cfg.update_freq
        # loss and target sums since the last log: on the device, read once per log interval
        self.loss_acc = torch.zeros(2, dtype=torch.float64, device=device)

    @classmethod
    def build(cls, cfg: TrainConfig, rank: int, world: int, device: torch.device) -> Trainer:
        t = cls(cfg, rank, world, device)
        if t.is_main:
            t.run_dir.mkdir(parents=True, exist_ok=True)
        t.build_data()
        t.build_model()
        t.build_optimizer()
        t.resume()
        return t

    # ---------------------------------------------------------------------------------------- data
    def build_data(self) -> None:
        """Tokenizer, train / valid datasets of this cluster and the sampler; checks the binarized dirs.

        clm / mlm read the cluster's monolingual stream; tlm the binarized pairs (`cfg.pairs_dir`: the
        cluster's own when the pairs were clustered, else all of them); mlm+tlm both, validating on the MLM
        share only (so its valid loss compares with an mlm expert's)."""
        cfg = self.cfg
        manifests = []  # (manifest, where): every binarized input must be made with this run's tokenizer
        if uses_monolingual(cfg.objective):
            bman = read_binarized_manifest(cfg.data_dir)
            self._check_routing(bman, "binarized data", cfg.data_dir)
            manifests.append((bman, cfg.data_dir))
        pman = None
        if uses_pairs(cfg.objective):
            if not cfg.pairs_dir:
                raise InputError(f"--objective {cfg.objective} needs binarized parallel data (pairs_dir)", cfg.run_dir)
            pman = read_pairs_manifest(cfg.pairs_dir)
            if pman["num_clusters"] is not None:  # clustered pairs: this expert reads its own cluster's
                self._check_routing(pman, "binarized parallel data", cfg.pairs_dir)
            manifests.append((pman, cfg.pairs_dir))
        tok_path = cfg.tokenizer or manifests[0][0]["tokenizer"]
        self.tok = tok = load_tokenizer(tok_path)
        for man, where in manifests:
            if tok.fingerprint != man["tokenizer_fingerprint"]:
                raise InputError(f"binarized data was made with another tokenizer than {tok_path}", where)

        def mono(split):
            s = TokenStream(bin_path(cfg.data_dir, split, cfg.cluster), idx_path(cfg.data_dir, split, cfg.cluster))
            if cfg.objective == "clm":
                return CLMDataset(s, cfg.tokens_per_sample)
            return MLMDataset(
                s,
                cfg.tokens_per_sample,
                vocab_size=tok.vocab_size,
                mask_id=tok.mask_id,
                bos_id=tok.bos_id,
                seed=cfg.seed,
            )

        def tlm(split):
            cluster = None if pman["num_clusters"] is None else cfg.cluster
            return TLMDataset(
                PairStream(cfg.pairs_dir, split, cluster),
                cfg.tokens_per_sample,
                vocab_size=tok.vocab_size,
                mask_id=tok.mask_id,
                bos_id=tok.bos_id,
                pad_id=tok.pad_id,
                eos_id=tok.eos_id,
                seed=cfg.seed,
            )

        if cfg.objective == "tlm":
            self.train_ds = tlm(cfg.train_subset)
            if len(self.train_ds) == 0:
                raise InputError("no translation pairs to train on", cfg.pairs_dir)
            assert pman is not None  # tlm uses pairs: their manifest was read above
            has_valid = cfg.valid_subset and cfg.valid_subset in pman.get("splits", {})
            self.valid_ds = tlm(cfg.valid_subset) if has_valid else None
        else:
            self.train_ds = mono(cfg.train_subset)
            if len(self.train_ds) == 0:
                raise InputError(
                    f"cluster {cfg.cluster} has fewer than {cfg.tokens_per_sample + 1} training tokens",
                    bin_path(cfg.data_dir, cfg.train_subset, cfg.cluster),
                )
            if cfg.objective == "mlm+tlm":
                self.train_ds = MLMTLMDataset(self.train_ds, tlm(cfg.train_subset), cfg.tlm_ratio, cfg.seed)
            self.valid_ds = mono(cfg.valid_subset) if cfg.valid_subset else None
        self.sampler = Sampler(len(self.train_ds), cfg.seed)

    def _check_routing(self, manifest: dict, what: str, where) -> None:
        """A binarized manifest was routed for this run: K clusters, by the run's clusterer (the config takes
        the manifest's when it names none; a manifest without one, the dense baseline, matches any)."""
        cfg = self.cfg
        if manifest["num_clusters"] != cfg.num_clusters:
            raise InputError(f"{what} has {manifest['num_clusters']} clusters, run expects {cfg.num_clusters}", where)
        fp = manifest.get("clusterer_fingerprint")
        if cfg.clusterer_fingerprint is None:
            cfg.clusterer_fingerprint = fp
        elif fp not in (None, cfg.clusterer_fingerprint):
            raise InputError(f"{what} comes from clusterer {fp}, the run expects {cfg.clusterer_fingerprint}", where)

    def train_tokens(self) -> int:
        """Tokens of the training data (recorded in expert.json; a resume on changed data warns)."""
        ds = self.train_ds
        parts: list[CLMDataset | MLMDataset | TLMDataset] = [ds.mlm, ds.tlm] if isinstance(ds, MLMTLMDataset) else [ds]
        return sum(len(p.pairs.src) + len(p.pairs.tgt) if isinstance(p, TLMDataset) else len(p.stream) for p in parts)

    # --------------------------------------------------------------------------------------- model
    def build_model(self) -> None:
        """The model on this rank's device, parallelized; the seed's weights (or, on resume, the shape the
        run started with: the checkpoint overwrites the weights). Writes expert.json on a fresh start."""
        cfg, tok, device = self.cfg, self.tok, self.device
        started = read_expert_info(self.run_dir) if latest_checkpoint(self.run_dir) is not None else None
        if started is not None:
            # a resume reads nothing: the DCP checkpoint overwrites the freshly allocated weights
            args = ModelArgs.from_dict(started.model_args)
            model, full_sd = materialize(args, device), None
        else:
            model, args, full_sd = model_on_rank(cfg, tok, device, self.world, self.is_main)
        check_model_fits(args.arch, args.max_positions, cfg.objective, cfg.tokens_per_sample, cfg.seed_model)
        if started is not None:
            if started.tokenizer_fingerprint != tok.fingerprint:
                raise InputError(
                    f"this run was started with another tokenizer than {tok.path}; resume it with "
                    "the same --tokenizer or use a new --serialization-dir",
                    self.run_dir / "expert.json",
                )
            was = started.data.get("train_tokens")
            if self.is_main and was is not None and was != self.train_tokens():
                log.warning(
                    f"the training data of cluster {cfg.cluster} changed since this run started ({was} -> "
                    f"{self.train_tokens()} tokens): resuming on the new data, so the batches from "
                    "here on differ from those of an uninterrupted run"
                )
        if args.vocab_size < tok.vocab_size:
            raise InputError(
                f"model vocabulary ({args.vocab_size}) is smaller than the tokenizer's ({tok.vocab_size})",
                cfg.seed_model,
            )
        if self.is_main and started is None:
            # `objective` is what the expert is (scored as): a TLM-trained one is a masked LM; how it was
            # trained is data.config.objective
            write_expert_info(
                self.run_dir,
                ExpertInfo(
                    cluster=cfg.cluster,
                    num_clusters=cfg.num_clusters,
                    clusterer_fingerprint=cfg.clusterer_fingerprint,
                    objective=model_kind(cfg.objective),
                    model_args=args.to_dict(),
                    tokenizer=str(Path(tok.path).resolve()),
                    tokenizer_fingerprint=tok.fingerprint,
                    seed_model=cfg.seed_model,
                    # the initial weights' identity, before parallelize shards or casts them (rank 0 holds all)
                    seed_identity=seed_identity(
                        cfg.seed_model, cfg.seed, full_sd if full_sd is not None else model.state_dict()
                    ),
                    run_name=cfg.run_name,
                    init=dict(cfg.init or {}),
                    data={
                        "binarized": str(Path(cfg.data_dir).resolve()),
                        "train_subset": cfg.train_subset,
                        "valid_subset": cfg.valid_subset,
                        "train_tokens": self.train_tokens(),
                        "pairs": None if cfg.pairs_dir is None else str(Path(cfg.pairs_dir).resolve()),
                        "tokens_per_sample": cfg.tokens_per_sample,
                        "dp": self.dims.dp,
                        "tp": self.dims.tp,
                        "precision": self.precision,
                        "config": cfg.to_dict(),
                    },
                ),
            )
        parallelize(
            model,
            self.mesh,
            device_type=device.type,
            precision=self.precision,
            ac=cfg.activation_checkpointing,
            compile=cfg.compile,
        )
        # the loss component for this mesh (vocabulary-parallel under TP), applied to the model's hidden states
        self.loss_fn = build_loss_fn(self.mesh, chunk_mib=cfg.loss_chunk_mib)
        from torch.distributed.fsdp import FSDPModule

        self.fsdp = isinstance(model, FSDPModule)  # not on a 1-process fp32 mesh, where it would shard nothing
        if full_sd is not None:  # rank 0 holds the seed: scatter it into every rank's shards
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(
                model,
                full_sd if self.is_main else {},
                options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
            )
            del full_sd
        model.train()
        self.model, self.args = model, args

    def build_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.cfg, self.device.type)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Where the run is, besides the model and optimizer (what a checkpoint's train_state.json holds)."""
        return {"step": self.step, "position": self.position, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.position = int(state["step"]), int(state["position"])

    def resume(self) -> None:
        """Collective: continue from the newest readable checkpoint, if the run has one."""
        if latest_checkpoint(self.run_dir) is None:
            if self.is_main:
                log.info(f"branched from seed {self.cfg.seed_model} (fresh optimizer and schedule)")
            return
        self.resumed_from, st = load_newest_readable(self.run_dir, self.model, self.optimizer)
        self.load_state_dict(st)
        if self.is_main:
            log.info(f"resumed from {self.resumed_from} (step {self.step}, sample {self.position})")

    def save(self) -> None:
        """Collective: checkpoint the current step (model, optimizer, state_dict()); in the background
        unless --sync-checkpoints (then `finish_saves` publishes it)."""
        if self.cfg.sync_checkpoints:
            save_checkpoint(
                self.run_dir, self.step, self.model, self.optimizer, self.state_dict(), keep=self.cfg.keep_checkpoints
            )
            return
        if self._async is None:
            self._async = AsyncCheckpointer(self.run_dir, keep=self.cfg.keep_checkpoints)
        self._async.save(self.step, self.model, self.optimizer, self.state_dict())

    def finish_saves(self, wait: bool = True) -> None:
        """Publish a background save that has finished (`wait`: block until the pending one has)."""
        if self._async is not None:
            self._async.wait() if wait else self._async.poll()

    # ------------------------------------------------------------------------------------------- step
    def step_batches(self, position: int) -> list:
        """This rank's micro-batches of the step whose first global sample is `position` (CPU tensors)."""
        return [
            collate(
                self.train_ds, self.sampler, rank_indices(position, m, self.dp_rank, self.dims.dp, self.cfg.batch_size)
            )
            for m in range(self.cfg.update_freq)
        ]

    def train_step(self, micro: list) -> torch.Tensor:
        """One optimizer step on this rank's micro-batches; returns the gradient norm (before clipping) as a
        device tensor. Nothing here waits for the device."""
        import torch.distributed as dist

        cfg, device = self.cfg, self.device
        torch.manual_seed(step_seed(cfg.seed, self.step, self.dp_rank))
        set_lr(self.optimizer, lr_at(self.step + 1, cfg))
        # normalize by the step's GLOBAL target count, so the gradient is the same mean over tokens whatever
        # the DP degree / micro-batching (MLM target counts differ per sample). Counted on the host batch;
        # across ranks it stays a device tensor: nothing on the step path waits for the device.
        # FSDP averages gradients over dp
        denom: float | torch.Tensor = sum(int((b[1] != -100).sum()) for b in micro) / self.dims.dp
        if self.dims.dp > 1:
            ntok = torch.tensor([denom * self.dims.dp], dtype=torch.float64, device=device)
            dist.all_reduce(ntok, group=self.dp_group)
            denom = (ntok[0] / self.dims.dp).float()
        for m, batch in enumerate(micro):
            if self.fsdp:  # accumulate locally; reduce-scatter gradients only after the last micro-batch
                self.model.set_requires_gradient_sync(m == len(micro) - 1)
            # dropout masks follow the samples (their global index), not the rank or micro-batch they are in;
            # backward too: activation checkpointing recomputes the forward there
            idx = rank_indices(self.position, m, self.dp_rank, self.dims.dp, cfg.batch_size)
            with sample_seeds([sample_seed(cfg.seed, g) for g in idx]):
                loss = self.batch_loss(batch)
                (loss / denom).backward()
            self.loss_acc[0] += loss.detach()
        gnorm = clip_grad_norm(self.model.parameters(), cfg.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += self.samples_per_step
        self.loss_acc[1] += denom
        return gnorm

    def batch_loss(self, batch) -> torch.Tensor:
        """Summed token cross-entropy (fp32) of one collated (inputs, targets[, positions]) batch, moved to the
        device, left there (callers count targets on the host batch): the model's hidden states reduced by
        the loss component (`self.loss_fn`) chunk by chunk, so no [B, T, V] logits are ever held. TLM batches
        carry positions and end in padding: the pads are masked out of attention (when there are any)."""
        x, y, *pos = batch
        dev = self.device
        if not pos:
            return model_loss(
                self.model, x.to(dev, non_blocking=True), None, y.to(dev, non_blocking=True), loss_fn=self.loss_fn
            )
        pad = x.eq(self.args.pad_id)  # on the host batch: nothing waits for the device
        pad = pad.to(dev, non_blocking=True) if bool(pad.any()) else None
        return model_loss(
            self.model,
            x.to(dev, non_blocking=True),
            pad,
            y.to(dev, non_blocking=True),
            loss_fn=self.loss_fn,
            positions=pos[0].to(dev, non_blocking=True),
        )

    def valid_batch_size(self) -> int:
        """Samples per validation forward on each dp rank: --batch-tokens-valid worth (default
        VALID_BATCH_FACTOR x the training micro-batch), at least one."""
        cfg = self.cfg
        tokens = cfg.batch_tokens_valid or VALID_BATCH_FACTOR * cfg.batch_size * cfg.tokens_per_sample
        return max(1, tokens // cfg.tokens_per_sample)

    def validate(self) -> float | None:
        """Collective: mean token loss (nats) on the valid split (at most max_valid_samples samples), in no-grad
        batches of `valid_batch_size()`; `self.valid_tokens_per_s` holds the pass's throughput."""
        import torch.distributed as dist

        cfg, valid_ds = self.cfg, self.valid_ds
        if valid_ds is None or len(valid_ds) == 0:
            return None
        t0 = time.perf_counter()
        self.model.eval()
        n = len(valid_ds) if cfg.max_valid_samples is None else min(len(valid_ds), cfg.max_valid_samples)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        vbs = self.valid_batch_size()
        per = self.dims.dp * vbs
        with torch.no_grad():
            for b in range(math.ceil(n / per)):
                idx = [i for i in rank_indices(b * per, 0, self.dp_rank, self.dims.dp, vbs) if i < n]
                # every rank runs the same number of forwards (FSDP collectives); empty ones count zero
                batch = collate(valid_ds, Sampler(len(valid_ds), 0, shuffle=False), idx or [0])
                loss = self.batch_loss(batch)
                if idx:
                    total[0] += loss.detach()
                    total[1] += int((batch[1] != -100).sum())
        dist.all_reduce(total, group=self.dp_group)
        self.model.train()
        # every token read (inputs, not only targets), as training's tokens/s counts them
        self.valid_tokens_per_s = n * cfg.tokens_per_sample / max(time.perf_counter() - t0, 1e-9)
        # the target count (a 0-d tensor), or 1 when none: typeshed's max() cannot order tensors (their `<` is
        # a tensor, not a bool)
        count = cast("torch.Tensor | int", max(total[1], 1))
        return float(total[0] / count)

    # ------------------------------------------------------------------------------------------- loop
    def fit(self, preempt) -> TrainResult:
        """Train to max_steps: log, validate and checkpoint at their intervals, stop (saved) on preemption."""
        import torch.distributed as dist

        cfg, dims = self.cfg, self.dims
        fpt = flops_per_token(self.args, cfg.tokens_per_sample)
        peak = peak_flops(self.device)
        logger = MetricLogger(self.run_dir, self.is_main, cfg.tensorboard)
        bar = None
        show_bar = cfg.progress_bar if cfg.progress_bar is not None else sys.stdout.isatty()
        if self.is_main and show_bar:
            bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        echo = bar is None
        saved_step = self.step if self.resumed_from is not None else -1

        def save_once():
            nonlocal saved_step
            if saved_step != self.step:
                saved_step = self.step
                self.save()

        def log_valid(step: int) -> float | None:
            vl = self.validate()
            if vl is not None:
                bits = vl / math.log(2)
                logger.log(
                    {
                        "kind": "valid",
                        "step": step,
                        "loss": bits,
                        "ppl": 2**bits,
                        "subset": cfg.valid_subset,
                        "tokens_per_s": self.valid_tokens_per_s,
                    },
                    echo=echo,
                )
                return bits
            return None

        # the log reads like one uninterrupted run: what a killed run logged past the step this one starts
        # from goes, all of it when it left no checkpoint (this run starts over and logs from step 0 again)
        logger.truncate_after(self.step if self.resumed_from is not None else -1)
        if self.resumed_from is not None:
            logger.log(
                {
                    "kind": "resume",
                    "step": self.step,
                    "position": self.position,
                    "checkpoint": self.resumed_from.name,
                    "dp": dims.dp,
                    "tp": dims.tp,
                    "precision": self.precision,
                },
                echo=False,
            )
        tokens_per_step = self.samples_per_step * cfg.tokens_per_sample
        valid_loss, status = None, "completed"
        train_time, steps_since = 0.0, 0  # time inside train steps only (not validation / saving)
        if self.step == 0 and cfg.validate_at_start and cfg.max_steps > 0:
            log_valid(0)  # the seed's loss on this cluster: the baseline the expert should beat
        prefetch = Prefetcher(self.step_batches, self.position, self.samples_per_step, pin=self.device.type == "cuda")
        try:
            while self.step < cfg.max_steps:
                if preempt.agreed(self.device):
                    status = "preempted"
                    break
                t0 = time.perf_counter()
                gnorm: torch.Tensor | float = self.train_step(prefetch.next())  # read as a float to log
                self.finish_saves(wait=False)
                steps_since += 1
                step = self.step
                log_now = step % cfg.log_interval == 0 or step == cfg.max_steps
                if log_now:  # the only host read of the step path: once per log interval
                    dist.all_reduce(self.loss_acc, group=self.dp_group)
                    loss_sum, tok_sum = self.loss_acc.tolist()
                    gnorm = float(gnorm)
                train_time += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                if log_now:
                    train_loss = loss_sum / max(tok_sum, 1) / math.log(2)
                    tps = tokens_per_step * steps_since / max(train_time, 1e-9)
                    logger.log(
                        {
                            "kind": "train",
                            "step": step,
                            "loss": train_loss,
                            "ppl": 2**train_loss,
                            "lr": lr_at(step, cfg),
                            "gnorm": gnorm,
                            "tokens_per_s": tps,
                            "mfu": mfu(fpt, tps / self.world, peak),
                            "epoch": self.sampler.epoch(self.position),
                            "position": self.position,
                        },
                        echo=echo,
                    )
                    self.loss_acc.zero_()
                    train_time, steps_since = 0.0, 0
                if cfg.validate_interval_updates and (
                    step % cfg.validate_interval_updates == 0 or step == cfg.max_steps
                ):
                    bits = log_valid(step)
                    valid_loss = bits if bits is not None else valid_loss
                if cfg.save_interval_updates and step % cfg.save_interval_updates == 0 and step < cfg.max_steps:
                    save_once()
        finally:
            prefetch.close()
        save_once()
        self.finish_saves()  # the last checkpoint is published before the run reports its result
        if bar is not None:
            bar.close()
        logger.close()
        if status == "preempted":
            if self.is_main:
                log.info(
                    f"preempted: saved step {self.step} to {self.run_dir}/checkpoints; rerun the same command to resume"
                )
            preempt.hand_over(self.is_main)
        return TrainResult(status, self.step, str(self.run_dir), valid_loss)
