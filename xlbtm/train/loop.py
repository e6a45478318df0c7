"""The training loop of ONE expert: branch from the seed (or resume), train, validate, checkpoint.

Every rank of the expert's process group runs `train_expert(cfg)`. Batches and the schedule are functions of
(seed, step, global sample index), so a resumed run -- also at another data-parallel degree -- continues
with exactly the samples and learning rates an uninterrupted run would have used. Dropout masks are seeded
by (seed, step, dp rank): a resume on the same layout is bitwise exact (tests/test_train.py kills a run
with dropout 0.1 and checks), while one at another DP degree draws other masks for the same samples (the
same distribution; exactness there would need a random stream per sample, also inside fused attention).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.errors import InputError, UsageError
from xlbtm.train.config import TrainConfig

log = get_logger("train")


@dataclass
class TrainResult:
    status: str                  # "completed" | "preempted"
    step: int
    run_dir: str
    valid_loss: float | None = None


# ------------------------------------------------------------------------------------------ process group

def _init_distributed(device: str | None):
    """(rank, world_size, device) from the launch layer (submitit, torchrun, srun or alone); a single process
    still gets a 1-rank group so the same mesh / FSDP code path runs everywhere."""
    from xlbtm.launch.distributed import init_distributed

    info = init_distributed(device=device, init_single=True)
    return info.rank, info.world_size, torch.device(info.device), info.source != "existing"


def _step_seed(seed: int, step: int, dp_rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, dp_rank]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------- model

def _model_and_args(cfg: TrainConfig, resuming: bool, info_args: dict | None, tok):
    """Full model on CPU, identical on every rank (seeded), plus its ModelArgs."""
    from xlbtm.models import ModelArgs, build_model, load_seed

    torch.manual_seed(cfg.seed)  # preset seeds: the same random init on every rank
    if resuming and info_args is not None:
        args = ModelArgs.from_dict(info_args)
        return build_model(args), args, {}
    # presets take the tokenizer's vocabulary; checkpoints must cover it
    model, args, seed_info = load_seed(cfg.seed_model, model_size=cfg.model_size, vocab_size=tok.vocab_size)
    if cfg.dropout is not None and cfg.dropout != args.dropout:
        # the models read their dropout rates from ModelArgs at build time: rebuild with the override
        import dataclasses

        args = dataclasses.replace(args, dropout=cfg.dropout, attention_dropout=cfg.dropout,
                                   activation_dropout=cfg.dropout)
        sd = model.state_dict()
        model = build_model(args)
        model.load_state_dict(sd)
    return model, args, seed_info


def _materialize(args, device):
    """A model built on the meta device, then allocated directly on `device` (no host copy)."""
    from xlbtm.models import build_model

    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device=device)
    model.init_weights()  # also fills non-persistent buffers (sinusoidal positions)
    return model


def _build_model(cfg: TrainConfig, resuming: bool, info_args: dict | None, tok, rank: int, world: int, device):
    """(model on `device`, args, full state dict to broadcast from rank 0 or None).

    Only rank 0 reads the seed (host memory: one copy per node, not one per GPU); the other ranks allocate
    their model on the device and receive the weights after parallelization. A resumed run reads nothing:
    the DCP checkpoint overwrites the freshly allocated weights."""
    import torch.distributed as dist

    from xlbtm.models import ModelArgs

    if resuming and info_args is not None:
        return _materialize(ModelArgs.from_dict(info_args), device), ModelArgs.from_dict(info_args), None
    if world == 1:
        model, args, _ = _model_and_args(cfg, False, None, tok)
        return model.to(device), args, None
    full_sd, obj = None, [None]
    if rank == 0:
        seed_model, args, _ = _model_and_args(cfg, False, None, tok)
        full_sd = seed_model.state_dict()
        del seed_model
        obj = [args.to_dict()]
    dist.broadcast_object_list(obj, src=0)
    args = ModelArgs.from_dict(obj[0])
    return _materialize(args, device), args, full_sd if rank == 0 else {}


def _forward_loss(model, inputs, targets):
    """Summed token cross-entropy (fp32), left on the device (callers count targets on the host batch).
    The model computes it chunk by chunk from its hidden states: no [B, T, V] logits are ever held."""
    return model(inputs, None, targets=targets)


# -------------------------------------------------------------------------------------------------- train

def train_expert(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one expert; every rank of its process group calls this."""
    if cfg.objective not in ("clm", "mlm"):
        raise UsageError(f"--objective must be clm or mlm, got {cfg.objective!r}")
    from xlbtm.train.preemption import PreemptionHandler

    rank, world, device, own_group = _init_distributed(cfg.device)
    from xlbtm.train.expert_dir import RunLock

    lock = RunLock(cfg.run_dir)
    preempt = PreemptionHandler().install()
    try:
        _hold_run_lock(lock, rank)
        return _train(cfg, rank, world, device, preempt)
    finally:
        lock.release()
        preempt.uninstall()
        if own_group:  # e.g. `--run debug` trains in the caller's process: leave no process group behind
            from xlbtm.launch.distributed import destroy_distributed

            destroy_distributed()


def _hold_run_lock(lock, rank: int) -> None:
    """Rank 0 locks the run dir; every rank learns the outcome (so none waits in a collective for a rank 0
    that stopped) and all stop together when another trainer holds it."""
    import torch.distributed as dist

    why = [lock.acquire() if rank == 0 else None]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(why, src=0)
    if why[0] is not None:
        raise UsageError(f"{why[0]}: wait for it to finish (or stop it), or train into another "
                         "--serialization-dir")


def _train(cfg: TrainConfig, rank: int, world: int, device, preempt) -> TrainResult:
    import torch.distributed as dist

    from xlbtm.data.binarize import bin_path, idx_path, read_binarized_manifest
    from xlbtm.data.dataset import CLMDataset, MLMDataset, Sampler, TokenStream, collate, rank_indices
    from xlbtm.parallel.checkpoint import latest_checkpoint, load_newest_readable, save_checkpoint
    from xlbtm.parallel.mesh import ParallelDims, build_mesh
    from xlbtm.parallel.parallelize import parallelize
    from xlbtm.train.expert_dir import ExpertInfo, read_expert_info, write_expert_info
    from xlbtm.train.metrics import MetricLogger, mfu, peak_flops
    from xlbtm.train.optim import build_optimizer, clip_grad_norm, lr_at, set_lr

    dims = ParallelDims.from_world(world, cfg.tensor_parallel_size)
    mesh = build_mesh(dims, device.type)
    dp_rank = mesh["dp"].get_local_rank()
    dp_group = mesh["dp"].get_group()
    is_main = rank == 0
    run_dir = Path(cfg.run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # ---- data
    bman = read_binarized_manifest(cfg.data_dir)
    if bman["num_clusters"] != cfg.num_clusters:
        raise InputError(f"binarized data has {bman['num_clusters']} clusters, run expects {cfg.num_clusters}",
                         cfg.data_dir)
    if cfg.clusterer_fingerprint is None:
        cfg.clusterer_fingerprint = bman.get("clusterer_fingerprint")
    elif bman.get("clusterer_fingerprint") not in (None, cfg.clusterer_fingerprint):
        raise InputError(f"binarized data comes from clusterer {bman['clusterer_fingerprint']}, the run expects "
                         f"{cfg.clusterer_fingerprint}", cfg.data_dir)
    tok_path = cfg.tokenizer or bman["tokenizer"]
    from xlbtm.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_path)
    if tok.fingerprint != bman["tokenizer_fingerprint"]:
        raise InputError(f"binarized data was made with another tokenizer than {tok_path}", cfg.data_dir)

    def stream(split):
        return TokenStream(bin_path(cfg.data_dir, split, cfg.cluster), idx_path(cfg.data_dir, split, cfg.cluster))

    def dataset(split):
        s = stream(split)
        if cfg.objective == "clm":
            return CLMDataset(s, cfg.tokens_per_sample)
        return MLMDataset(s, cfg.tokens_per_sample, vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                          bos_id=tok.bos_id, seed=cfg.seed)

    train_ds = dataset(cfg.train_subset)
    if len(train_ds) == 0:
        raise InputError(f"cluster {cfg.cluster} has fewer than {cfg.tokens_per_sample + 1} training tokens",
                         bin_path(cfg.data_dir, cfg.train_subset, cfg.cluster))
    valid_ds = dataset(cfg.valid_subset) if cfg.valid_subset else None
    sampler = Sampler(len(train_ds), cfg.seed)

    # ---- model (+ expert.json), parallelize, optimizer, resume
    ckpt = latest_checkpoint(run_dir)
    info_args = read_expert_info(run_dir).model_args if ckpt is not None else None
    model, args, full_sd = _build_model(cfg, ckpt is not None, info_args, tok, rank, world, device)
    from xlbtm.train.config import check_model_fits

    check_model_fits(args.arch, args.max_positions, cfg.objective, cfg.tokens_per_sample, cfg.seed_model)
    if ckpt is not None:
        started = read_expert_info(run_dir)
        if started.tokenizer_fingerprint != tok.fingerprint:
            raise InputError(f"this run was started with another tokenizer than {tok.path}; resume it with the "
                             f"same --tokenizer or use a new --serialization-dir", run_dir / "expert.json")
        was = started.data.get("train_tokens")
        if is_main and was is not None and was != len(train_ds.stream):
            log.warning(f"the training data of cluster {cfg.cluster} changed since this run started ({was} -> "
                        f"{len(train_ds.stream)} tokens): resuming on the new data, so the batches from here on "
                        "differ from those of an uninterrupted run")
    if args.vocab_size < tok.vocab_size:
        raise InputError(f"model vocabulary ({args.vocab_size}) is smaller than the tokenizer's ({tok.vocab_size})",
                         cfg.seed_model)
    if is_main and ckpt is None:
        write_expert_info(run_dir, ExpertInfo(
            cluster=cfg.cluster, num_clusters=cfg.num_clusters, clusterer_fingerprint=cfg.clusterer_fingerprint,
            objective=cfg.objective, model_args=args.to_dict(), tokenizer=str(Path(tok.path).resolve()),
            tokenizer_fingerprint=tok.fingerprint, seed_model=cfg.seed_model, run_name=cfg.run_name,
            data={"binarized": str(Path(cfg.data_dir).resolve()), "train_subset": cfg.train_subset,
                  "valid_subset": cfg.valid_subset, "train_tokens": len(train_ds.stream),
                  "tokens_per_sample": cfg.tokens_per_sample, "dp": dims.dp, "tp": dims.tp,
                  "config": cfg.to_dict()}))
    parallelize(model, mesh, device_type=device.type, ac=cfg.activation_checkpointing, compile=cfg.compile)
    from torch.distributed.fsdp import FSDPModule

    fsdp = isinstance(model, FSDPModule)  # not on a 1-process fp32 mesh, where it would shard nothing
    if full_sd is not None:  # rank 0 holds the seed: scatter it into every rank's shards
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, full_sd if rank == 0 else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full_sd
    model.train()
    optimizer = build_optimizer(model, cfg, device.type)
    step, position = 0, 0
    if ckpt is not None:
        ckpt, st = load_newest_readable(run_dir, model, optimizer)  # falls back past a corrupt newest step
        step, position = st["step"], st["position"]
        if is_main:
            log.info(f"resumed from {ckpt} (step {step}, sample {position})")
    elif is_main:
        log.info(f"branched from seed {cfg.seed_model} (fresh optimizer and schedule)")

    # ---- metrics
    from xlbtm.models import flops_per_token

    fpt = flops_per_token(args, cfg.tokens_per_sample)
    peak = peak_flops(device)
    logger = MetricLogger(run_dir, is_main, cfg.tensorboard)
    bar = None
    show_bar = cfg.progress_bar if cfg.progress_bar is not None else sys.stdout.isatty()
    if is_main and show_bar:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True)

    saved_step = step if ckpt is not None else -1

    def save():
        nonlocal saved_step
        if saved_step == step:
            return
        saved_step = step
        save_checkpoint(run_dir, step, model, optimizer, {"step": step, "position": position, "seed": cfg.seed},
                        keep=cfg.keep_checkpoints)

    def validate() -> float | None:
        if valid_ds is None or len(valid_ds) == 0:
            return None
        model.eval()
        n = len(valid_ds) if cfg.max_valid_samples is None else min(len(valid_ds), cfg.max_valid_samples)
        total = torch.zeros(2, dtype=torch.float64, device=device)  # NCCL reduces device tensors only
        per = dims.dp * cfg.batch_size
        with torch.no_grad():
            for b in range(math.ceil(n / per)):
                idx = [i for i in rank_indices(b * per, 0, dp_rank, dims.dp, cfg.batch_size) if i < n]
                # every rank runs the same number of forwards (FSDP collectives); empty ones count zero
                x, y = collate(valid_ds, Sampler(len(valid_ds), 0, shuffle=False), idx or [0])
                loss = _forward_loss(model, x.to(device), y.to(device))
                if idx:
                    total[0] += loss.detach()
                    total[1] += int((y != -100).sum())
        dist.all_reduce(total, group=dp_group)
        model.train()
        return float(total[0] / max(total[1], 1))

    if ckpt is not None:
        logger.truncate_after(step)
        logger.log({"kind": "resume", "step": step, "position": position, "checkpoint": ckpt.name,
                    "dp": dims.dp, "tp": dims.tp}, echo=False)

    # ---- loop
    tokens_per_step = cfg.batch_size * dims.dp * cfg.update_freq * cfg.tokens_per_sample
    samples_per_step = cfg.batch_size * dims.dp * cfg.update_freq
    valid_loss = None
    status = "completed"
    train_time, steps_since = 0.0, 0  # time inside train steps only (not validation / saving)
    loss_acc = torch.zeros(2, dtype=torch.float64, device=device)
    if step == 0 and cfg.validate_interval_updates and cfg.max_steps > 0:
        vl = validate()  # the seed's loss on this cluster: the baseline the expert should beat
        if vl is not None:
            logger.log({"kind": "valid", "step": 0, "loss": vl / math.log(2), "ppl": 2 ** (vl / math.log(2)),
                        "subset": cfg.valid_subset}, echo=bar is None)
    while step < cfg.max_steps:
        if preempt.agreed(device):
            status = "preempted"
            break
        t0 = time.perf_counter()
        torch.manual_seed(_step_seed(cfg.seed, step, dp_rank))
        lr = lr_at(step + 1, cfg)
        set_lr(optimizer, lr)
        micro = [collate(train_ds, sampler, rank_indices(position, m, dp_rank, dims.dp, cfg.batch_size))
                 for m in range(cfg.update_freq)]
        # normalize by the step's GLOBAL target count, so the gradient is the same mean over tokens whatever
        # the DP degree / micro-batching (MLM target counts differ per sample). Counted on the host batch;
        # across ranks it stays a device tensor: nothing on the step path waits for the device.
        denom = sum(int((y != -100).sum()) for _, y in micro) / dims.dp  # FSDP averages gradients over dp
        if dims.dp > 1:
            ntok = torch.tensor([denom * dims.dp], dtype=torch.float64, device=device)
            dist.all_reduce(ntok, group=dp_group)
            denom = (ntok[0] / dims.dp).float()
        for m, (x, y) in enumerate(micro):
            if fsdp:  # accumulate locally; reduce-scatter gradients only after the last micro-batch
                model.set_requires_gradient_sync(m == len(micro) - 1)
            loss = _forward_loss(model, x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            (loss / denom).backward()
            loss_acc[0] += loss.detach()
        gnorm = clip_grad_norm(model.parameters(), cfg.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        position += samples_per_step
        loss_acc[1] += denom
        steps_since += 1
        log_now = step % cfg.log_interval == 0 or step == cfg.max_steps
        if log_now:  # the only host read of the step path: once per log interval
            dist.all_reduce(loss_acc, group=dp_group)
            loss_sum, tok_sum = loss_acc.tolist()
            gnorm = float(gnorm)
        train_time += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        if log_now:
            train_loss = loss_sum / max(tok_sum, 1) / math.log(2)
            tps = tokens_per_step * steps_since / max(train_time, 1e-9)
            logger.log({"kind": "train", "step": step, "loss": train_loss, "ppl": 2 ** train_loss, "lr": lr,
                        "gnorm": gnorm, "tokens_per_s": tps, "mfu": mfu(fpt, tps / world, peak),
                        "epoch": sampler.epoch(position), "position": position}, echo=bar is None)
            loss_acc.zero_()
            train_time, steps_since = 0.0, 0
        if cfg.validate_interval_updates and (step % cfg.validate_interval_updates == 0 or step == cfg.max_steps):
            vl = validate()
            if vl is not None:
                valid_loss = vl / math.log(2)
                logger.log({"kind": "valid", "step": step, "loss": valid_loss, "ppl": 2 ** valid_loss,
                            "subset": cfg.valid_subset}, echo=bar is None)
        if cfg.save_interval_updates and step % cfg.save_interval_updates == 0 and step < cfg.max_steps:
            save()
    save()
    if bar is not None:
        bar.close()
    logger.close()
    if status == "preempted":
        if is_main:
            log.info(f"preempted: saved step {step} to {run_dir}/checkpoints; rerun the same command to resume")
        preempt.hand_over(is_main)
    return TrainResult(status, step, str(run_dir), valid_loss)
