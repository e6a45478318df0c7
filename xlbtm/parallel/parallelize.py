"""Apply parallelism to a plain model from the outside (torchtitan style).

Order matters: TP first (DTensor-shards the Linear weights inside each block), then activation
checkpointing and compile per block, then FSDP2 `fully_shard` per block and finally on the root, so each
block's parameters are all-gathered just in time and freed after use.
Checkpoint keys never change: TP, compile and FSDP add no modules, and activation checkpointing's wrapper
(`checkpoint_wrapper`) drops its `_checkpoint_wrapped_module.` from state dicts (`state_dict()` and DCP's
`get_model_state_dict` alike), so DCP state dicts use the plain model names with AC on or off.

The loss is not the model's: `build_loss_fn` picks the loss component for a mesh (the vocabulary-parallel
one under TP), which the trainer holds and applies to the model's hidden states (`xlbtm.models.loss`).
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from xlbtm.models.attention import Attention
from xlbtm.models.loss import LossFn, linear_cross_entropy
from xlbtm.parallel.loss_parallel import vocab_parallel_cross_entropy
from xlbtm.runtime import resolve_precision


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The model's blocks: XGLM and XLM-R both keep them in `layers` (an attribute nn.Module cannot type)."""
    return cast(nn.ModuleList, model.layers)


def apply_tp(model: nn.Module, tp_mesh) -> nn.Module:
    """Megatron-style TP with sequence parallelism, as torchtitan does it:

    - inside each block q/k/v and fc1 column-wise, out_proj and fc2 row-wise; between them the residual
      stream, its LayerNorms and dropouts are split along the sequence (each rank T/tp tokens): the row-wise
      layers reduce-scatter into that split, and the attention / fc1 inputs are all-gathered from it;
    - the token embedding vocabulary-parallel (rows sharded, lookups masked and summed), and with it the
      tied output projection, whose loss is then `loss_parallel.vocab_parallel_cross_entropy` (`build_loss_fn`
      picks it for such a mesh; XLM-R's vocab bias is sharded the same way). At XGLM's 256k vocabulary the embedding is ~46% of xglm-564M's matmul weights;
    - what lies between the embedding and the first block (positions, scaling, XLM-R's embedding norm) and
      after the last one (XGLM's final norm) runs on the whole sequence, replicated.

    The attention reshapes with `view(B, T, -1, head_dim)`, so fewer local heads just work. The sequence
    must split evenly: tokens per sample divisible by the TP degree.
    """
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleOutput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    seq = Shard(1)
    plan = {
        "self_attn_layer_norm": SequenceParallel(use_local_output=True),
        "final_layer_norm": SequenceParallel(use_local_output=True),
        "self_attn": PrepareModuleInput(
            input_layouts=(seq, None), desired_input_layouts=(Replicate(), None), use_local_output=True
        ),
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.out_proj": RowwiseParallel(output_layouts=seq),
        "fc1": ColwiseParallel(input_layouts=seq),
        "fc2": RowwiseParallel(output_layouts=seq),
    }
    layers = _blocks(model)
    for block in layers:
        attn = cast(Attention, block.self_attn)  # XGLM's and XLM-R's blocks both hold an Attention
        n_heads = attn.q_proj.out_features // attn.head_dim
        if n_heads % tp_mesh.size():
            from xlbtm.errors import UsageError

            raise UsageError(f"--tensor-parallel-size {tp_mesh.size()} must divide the number of heads ({n_heads})")
        parallelize_module(block, tp_mesh, plan)
    parallelize_module(
        layers[0],
        tp_mesh,
        PrepareModuleInput(input_layouts=(Replicate(), None), desired_input_layouts=(seq, None), use_local_output=True),
    )
    parallelize_module(
        layers[-1],
        tp_mesh,
        PrepareModuleOutput(output_layouts=seq, desired_output_layouts=Replicate(), use_local_output=True),
    )
    embed_tokens = cast(nn.Module, model.embed_tokens)  # nn.Module's attributes type as Tensor | Module
    parallelize_module(embed_tokens, tp_mesh, RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()))
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None:  # XLM-R: the decoder's bias follows the (tied) weight's rows
        lm_head.bias = nn.Parameter(distribute_tensor(lm_head.bias.data, tp_mesh, [Shard(0)]))
    return model


def apply_ac(model: nn.Module) -> nn.Module:
    """Activation checkpointing per block: keep only block inputs, recompute the rest in backward.

    Each block is wrapped in torch's `checkpoint_wrapper` (non-reentrant `torch.utils.checkpoint`, the RNG
    state preserved), as torchtitan does; the block's own `forward` is untouched. The wrapper's
    `_checkpoint_wrapped_module.` is dropped from state dict keys (its hooks, and DCP's `get_model_state_dict`),
    so a run with AC resumes one without it and back. FSDP wraps the wrapper, so its hooks run around the
    checkpointed block and recomputation sees unsharded weights. Per-sample dropout draws each row's masks
    from (its seed, the site), so recomputation draws the forward's masks (`xlbtm.models.dropout`).
    """
    layers = _blocks(model)
    for i, block in enumerate(layers):
        layers[i] = checkpoint_wrapper(block)
    return model


def apply_compile(model: nn.Module) -> nn.Module:
    """`torch.compile` each block in place (`nn.Module.compile` keeps FQNs; repeated blocks share a graph)."""
    for block in _blocks(model):
        block.compile()
    return model


def apply_fsdp(
    model: nn.Module,
    dp_mesh,
    *,
    param_dtype: torch.dtype = torch.float32,
    reduce_dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2 `fully_shard` per block (`reshard_after_forward`: all but the last), then the root (embeddings,
    final norm, LM head; kept gathered from forward to backward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    layers = _blocks(model)
    n = len(layers)
    for i, block in enumerate(layers):
        # the last block is needed again right away by backward: do not free it after forward
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < n - 1)
    # the root's weights (the embedding = the tied output projection, the final norm, XLM-R's LM head) stay
    # gathered after forward: the trainer's loss component reads them right after it, and backward needs them
    # right away (the state-dict hooks and backward reshard them)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)
    return model


def build_loss_fn(mesh, *, chunk_mib: float | None = None) -> LossFn:
    """The loss component for a model parallelized on `mesh`: the chunked linear + cross-entropy on one TP rank
    (`xlbtm.models.loss.linear_cross_entropy`), the vocabulary-parallel one under TP (the tied projection's
    weight is then sharded by rows: `loss_parallel.vocab_parallel_cross_entropy`). `chunk_mib`: MiB of fp32
    logits per chunk (per rank; None = derived, `xlbtm.models.loss.chunk_tokens`). Named like its function."""
    fn = vocab_parallel_cross_entropy if mesh["tp"].size() > 1 else linear_cross_entropy
    return functools.update_wrapper(functools.partial(fn, chunk_mib=chunk_mib), fn)


def parallelize(
    model: nn.Module,
    mesh,
    *,
    device_type: str,
    precision: str | None = None,
    ac: bool = False,
    compile: bool = False,
    fsdp: bool = True,
) -> nn.Module:
    """TP (when the mesh's tp size > 1) -> AC -> compile -> FSDP over dp.

    `precision` (`xlbtm.runtime.resolve_precision`; None = bf16-mixed on GPU, fp32 on CPU): bf16-mixed is
    FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) on any device (CPU over gloo too):
    the sharded parameters, their gradients and the optimizer state stay fp32 (so DCP checkpoints hold fp32
    master weights whatever the precision, and a run resumes in the other one), each block computes with a
    bf16 copy gathered just in time, and gradients are reduced in fp32. The loss is summed in fp32
    (`xlbtm.models.loss`). fp32 casts nothing.

    FSDP is skipped where it would do nothing: one process in the whole mesh and fp32 parameters (it would
    shard over one rank and cast nothing, yet its hooks and copies cost ~15% of a small model's step).
    Checkpoints do not care: DCP saves plain FQN-keyed tensors either way and reshards on load, so a run
    started on one CPU process resumes on an FSDP mesh and back (tests/test_parallel.py)."""
    mixed = resolve_precision(precision, device_type) == "bf16-mixed"
    if mesh["tp"].size() > 1:
        apply_tp(model, mesh["tp"])
    if ac:
        apply_ac(model)
    if compile:
        apply_compile(model)
    if fsdp and (mesh.size() > 1 or mixed):
        apply_fsdp(
            model, mesh["dp"], param_dtype=torch.bfloat16 if mixed else torch.float32, reduce_dtype=torch.float32
        )
    return model
