"""Models: numerical parity with transformers, presets, parameter / FLOP counts, TP-friendly layout."""

import pytest
import torch
from tolerance import tensor_tol

from xlbtm.models import ModelArgs, build_model, flops_per_token, get_preset, matmul_params, num_params
from xlbtm.models.adapters import hf_config, hf_to_xlbtm, xlbtm_to_hf

ATOL = 1e-5


def _tiny(arch, **kw):
    base = dict(
        arch=arch,
        vocab_size=97,
        d_model=64,
        n_layers=2,
        n_heads=4,
        ffn_dim=128,
        max_positions=40,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=(arch == "xglm"),
    )
    base.update(kw)
    return ModelArgs(**base)


def _randomize(model, seed=0):
    """Random values everywhere (LayerNorms and biases too) so no parameter is silently ignored."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _hf_model(args):
    from transformers import XGLMForCausalLM, XLMRobertaForMaskedLM

    cls = XGLMForCausalLM if args.arch == "xglm" else XLMRobertaForMaskedLM
    hf = cls(hf_config(args)).eval()
    return hf


def _pair(arch, seed=0, **kw):
    args = _tiny(arch, **kw)
    ours = _randomize(build_model(args), seed).eval()
    hf = _hf_model(args)
    missing, unexpected = hf.load_state_dict(xlbtm_to_hf(ours.state_dict(), args), strict=False)
    # only tied copies / non-persistent tables may be missing
    assert set(missing) <= {"lm_head.weight", "lm_head.decoder.weight", "lm_head.decoder.bias"}, missing
    assert not unexpected, unexpected
    return args, ours, hf


def _batch(args, B=3, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, args.vocab_size, (B, T), generator=g)


@pytest.mark.parametrize("arch", ["xglm", "xlmr"])
def test_parity_no_padding(arch):
    args, ours, hf = _pair(arch)
    x = _batch(args)
    with torch.no_grad():
        a = ours(x)
        b = hf(input_ids=x).logits
    assert a.shape == (3, 12, args.vocab_size)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["xglm", "xlmr"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_parity_with_padding(arch, side):
    args, ours, hf = _pair(arch, seed=3)
    x = _batch(args, seed=4)
    lengths = [12, 7, 3]
    pad = torch.zeros_like(x, dtype=torch.bool)
    for i, n in enumerate(lengths):
        if side == "right":
            pad[i, n:] = True
        else:
            pad[i, : 12 - n] = True
    x = x.masked_fill(pad, args.pad_id)
    with torch.no_grad():
        a = ours(x, padding_mask=pad)
        b = hf(input_ids=x, attention_mask=(~pad).long()).logits
    assert torch.isfinite(a).all()
    real = ~pad
    torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=0)
    if side == "right" or arch == "xlmr":
        # a padded row's real tokens equal the same tokens alone, unpadded (XGLM left padding shifts
        # positions in transformers, which we follow, so it is not checked there)
        i = 2
        with torch.no_grad():
            alone = ours(x[i : i + 1][real[i : i + 1]].view(1, -1))
        torch.testing.assert_close(a[i][real[i]], alone[0], atol=ATOL, rtol=0)


def test_xglm_is_causal_and_xlmr_is_not():
    for arch, causal in (("xglm", True), ("xlmr", False)):
        args = _tiny(arch)
        m = _randomize(build_model(args)).eval()
        x = _batch(args, B=1)
        y = x.clone()
        y[0, -1] = (x[0, -1] + 1 - 3) % (args.vocab_size - 3) + 3
        with torch.no_grad():
            changed = (m(x)[0, :-1] - m(y)[0, :-1]).abs().max().item()
        assert (changed == 0.0) == causal, (arch, changed)


def test_masked_input_parity_xlmr():
    """MLM inputs contain <mask>; logits still match HF at every position."""
    args, ours, hf = _pair("xlmr", seed=5, vocab_size=101)
    x = _batch(args, seed=6)
    x[:, ::3] = 100  # a "<mask>" id
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(input_ids=x).logits, atol=ATOL, rtol=0)


def test_hf_state_dict_round_trip_exact():
    for arch in ("xglm", "xlmr"):
        args, ours, hf = _pair(arch, seed=7)
        back = hf_to_xlbtm(hf.state_dict(), arch)
        mine = ours.state_dict()
        assert set(back) == set(mine)
        for k in mine:
            assert torch.equal(back[k], mine[k]), k


def test_training_mode_dropout_and_backward():
    args = _tiny("xglm", dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    m = build_model(args).train()
    x = _batch(args)
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    b = m(x)
    assert not torch.equal(a, b)  # dropout active
    a.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_block_names_for_tensor_parallel_and_fewer_local_heads():
    """TP shards q/k/v/fc1 by rows and out_proj/fc2 by columns from outside: emulate 2 ranks by hand and
    check that the sum of partial outputs equals the full block (attention reshapes with -1 heads)."""
    args = _tiny("xglm")
    m = _randomize(build_model(args)).eval()
    block = m.layers[0]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"):
        assert isinstance(block.get_submodule(name), torch.nn.Linear)
    attn = block.self_attn
    x = torch.randn(2, 5, args.d_model)
    with torch.no_grad():
        full = attn(x)
        partial = 0
        half = args.d_model // 2
        for r in range(2):
            sl = slice(r * half, (r + 1) * half)
            shard = type(attn)(args.d_model, args.n_heads, causal=True)
            for n in ("q_proj", "k_proj", "v_proj"):
                getattr(shard, n).weight = torch.nn.Parameter(getattr(attn, n).weight[sl].clone())
                getattr(shard, n).bias = torch.nn.Parameter(getattr(attn, n).bias[sl].clone())
            shard.out_proj.weight = torch.nn.Parameter(attn.out_proj.weight[:, sl].clone())
            shard.out_proj.bias = torch.nn.Parameter(attn.out_proj.bias / 2)
            partial = partial + shard(x)
    torch.testing.assert_close(partial, full, atol=1e-5, rtol=0)


def test_model_files_do_not_import_distributed():
    import pathlib

    import xlbtm.models as pkg

    for f in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        assert "torch.distributed" not in f.read_text(), f


def test_presets_match_public_sizes():
    # parameter counts of the published checkpoints (transformers' num_parameters())
    expected = {"xglm-564M": 564_463_616, "xlmr-base": 278_295_186}
    for name, n in expected.items():
        args = get_preset(name)
        with torch.device("meta"):
            model = build_model(args)
        assert num_params(model) == n, (name, num_params(model))
    for name in ("xglm-1.7B", "xglm-2.9B", "xglm-4.5B", "xglm-7.5B", "xlmr-large", "debug", "debug-xlmr"):
        args = get_preset(name)
        assert args.d_model % args.n_heads == 0
    assert get_preset("xglm-564M").vocab_size == 256008 and get_preset("xlmr-large").vocab_size == 250002
    assert get_preset("debug", vocab_size=300).vocab_size == 300
    assert get_preset("debug").d_model == 64 and get_preset("debug").n_layers == 2


def test_unknown_preset_is_usage_error():
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError, match="xglm-564M"):
        get_preset("xglm-999B")


def test_model_args_round_trip_and_validation():
    a = get_preset("xlmr-base", vocab_size=1234)
    assert ModelArgs.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="unknown ModelArgs fields"):
        ModelArgs.from_dict({**a.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        ModelArgs(d_model=10, n_heads=3)


def test_num_params_and_flops():
    args = _tiny("xglm")
    m = build_model(args)
    d, f, L, V = 64, 128, 2, 97
    per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    assert num_params(m) == V * d + L * per_layer + 2 * d  # tied head counted once
    assert num_params(m, exclude_embeddings=True) == L * per_layer + 2 * d
    assert matmul_params(args) == L * (4 * d * d + 2 * d * f) + V * d
    assert flops_per_token(args, 16) == 6 * matmul_params(args) + 12 * L * d * 16
    x = build_model(_tiny("xlmr"))
    assert matmul_params(_tiny("xlmr")) == matmul_params(args) + d * d
    assert num_params(x) > num_params(m)


def test_meta_device_build_then_init():
    args = _tiny("xglm")
    with torch.device("meta"):
        m = build_model(args)
    m.to_empty(device="cpu")
    m.init_weights()
    ref = build_model(args)
    torch.testing.assert_close(m.embed_positions, ref.embed_positions)
    assert torch.isfinite(m(_batch(args))).all()


def test_too_long_sequence_is_clear_error():
    args = _tiny("xglm", max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        build_model(args)(torch.ones(1, 9, dtype=torch.long))


# ------------------------------------------------------------------------------------------- chunked loss


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("preset", ["debug", "debug-xlmr"])
def test_chunked_loss_equals_plain_cross_entropy_and_never_holds_the_logits(preset, monkeypatch):
    """model_loss(model, x, None, y) == sum-CE of model(x) in value and in every parameter's gradient, fp32, with
    chunks that split the batch unevenly and ignored targets in them; no op ever makes a [tokens, V] tensor."""
    import torch.nn.functional as F

    import xlbtm.models.loss as loss_mod
    from xlbtm.models.loss import model_loss

    V, B, T = 2003, 3, 37
    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=V, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))
    x = torch.randint(4, V, (B, T))
    y = torch.roll(x, -1, dims=1)
    y[:, -3:] = -100
    if preset == "debug-xlmr":
        y[torch.rand(B, T) < 0.8] = -100  # MLM: most positions are not targets
    plain = F.cross_entropy(model(x).float().view(-1, V), y.view(-1), ignore_index=-100, reduction="sum")
    plain.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 4 * V * 10)  # 10 tokens per chunk: 12 chunks, the last of 1
    assert loss_mod.chunk_tokens(V) == 10
    with _LargestTensor() as seen:
        chunked = model_loss(model, x, None, y)
        chunked.backward()
    n = int((y != -100).sum())
    torch.testing.assert_close(chunked / n, plain.detach() / n, **tensor_tol(plain.detach() / n))
    assert set(ref) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, g in ref.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, g, atol=1e-6, rtol=1e-5, msg=name)
    d = model.args.d_model
    assert B * T > d and seen.largest == V * d, seen.largest  # the [V, D] weight (grad); logits: 10 x V at most

    with torch.no_grad():  # validation: the same value, no gradient work
        torch.testing.assert_close(model_loss(model, x, None, y), chunked.detach())


@pytest.mark.parametrize("preset", ["debug", "debug-xlmr"])
def test_per_sample_dropout_follows_the_sample_and_survives_recomputation(preset):
    """Under sample_seeds a row's dropout masks (embedding, residual, activation, attention) depend only on
    its seed: the same row in another batch, at another position, gives the same output; and activation
    checkpointing's recomputation draws the same masks (gradients equal the plain backward's)."""
    import copy

    from xlbtm.models.dropout import sample_seeds
    from xlbtm.models.loss import model_loss
    from xlbtm.parallel.parallelize import apply_ac

    torch.manual_seed(0)
    model = build_model(
        get_preset(preset, vocab_size=500, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    ).train()
    x = torch.randint(4, 500, (3, 16))
    with sample_seeds([11, 22, 33]):
        full = model(x, None)
        again = model(x, None)
    with sample_seeds([33, 11]):
        swapped = model(x[[2, 0]], None)
    torch.testing.assert_close(full, again, atol=0, rtol=0)
    torch.testing.assert_close(swapped[0], full[2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(swapped[1], full[0], atol=1e-6, rtol=1e-5)
    with sample_seeds([11, 22, 99]):
        other = model(x, None)
    assert not torch.allclose(other[2], full[2]) and torch.allclose(other[0], full[0], atol=1e-6)
    assert not torch.allclose(model(x, None), full)  # outside sample_seeds: the global RNG, as before

    y = torch.roll(x, -1, 1)
    ac = apply_ac(copy.deepcopy(model))
    for m in (model, ac):
        with sample_seeds([5, 6, 7]):
            model_loss(m, x, None, y).backward()
    for (name, p), q in zip(model.named_parameters(), ac.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("preset", ["debug", "debug-xlmr"])
def test_models_return_hidden_states_and_hold_no_loss(preset):
    """The loss is not the model's: `model(x, hidden=True)` gives the states its output projection reads, and
    F.linear of them with `output_projection()` is `model(x)`'s logits; no loss attribute on the model."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=300))
    x = torch.randint(4, 300, (2, 9))
    h = model(x, None, hidden=True)
    assert h.shape == (2, 9, model.args.d_model)
    torch.testing.assert_close(F.linear(h, *model.output_projection()), model(x), atol=0, rtol=0)
    assert not hasattr(model, "loss_fn")


def test_loss_chunks_from_a_memory_budget():
    """chunk_mib MiB of fp32 logits per chunk when given; by default twice the fp32 size of the [V, D] weight,
    between MIN_CHUNK_BYTES and CHUNK_BYTES (XGLM's vocabulary: 2 D tokens for a small body, 256 MiB from d 132)."""
    from xlbtm.models.loss import CHUNK_BYTES, MIN_CHUNK_BYTES, chunk_tokens

    V = 256008
    assert chunk_tokens(V) == CHUNK_BYTES // (4 * V) == 262  # without d_model: the cap
    assert chunk_tokens(V, 64) == 128 and chunk_tokens(V, 132) == chunk_tokens(V, 1024) == 262
    assert chunk_tokens(V, 1024, chunk_mib=32) == 32 * 2**20 // (4 * V) == 32
    assert chunk_tokens(1000, 64) == MIN_CHUNK_BYTES // 4000  # small vocabularies: at least the floor
    assert chunk_tokens(V, 64, chunk_mib=0.001) == 1


def test_activation_checkpointing_wraps_blocks_and_keeps_checkpoint_keys():
    """apply_ac wraps each block (torch's checkpoint_wrapper) without touching its forward; state dicts -- the
    module's and DCP's -- keep the plain keys, so a plain state dict loads into the AC model and back."""
    import copy

    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from xlbtm.models.xglm import DecoderBlock
    from xlbtm.parallel.parallelize import apply_ac

    torch.manual_seed(0)
    plain = build_model(get_preset("debug", vocab_size=300))
    ac = apply_ac(copy.deepcopy(plain))
    assert all(type(b) is not DecoderBlock and "forward" not in vars(b) for b in ac.layers)
    assert all("forward" not in vars(b) for b in plain.layers)
    keys = set(plain.state_dict())
    assert set(ac.state_dict()) == keys == set(get_model_state_dict(ac)) == set(get_model_state_dict(plain))
    other = _randomize(build_model(get_preset("debug", vocab_size=300)))
    ac.load_state_dict(other.state_dict())
    set_model_state_dict(plain, get_model_state_dict(ac))
    for k, v in other.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[k], v, atol=0, rtol=0, msg=k)
    x = torch.randint(4, 300, (2, 9))
    torch.testing.assert_close(ac(x), plain(x), atol=0, rtol=0)
