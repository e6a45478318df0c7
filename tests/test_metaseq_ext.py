"""metaseq sharded checkpoints: unflattening vs fairscale's own consolidate_shard_weights, MP gluing,
safe loading, and errors for incomplete shard sets."""

import argparse

import pytest
import torch
from metaseq_writer import flatten_and_shard, split_model_parallel, write_sharded_checkpoint

from xlbtm.errors import InputError
from xlbtm.formats.metaseq import consolidate_shard_weights, find_checkpoint_files, load_metaseq_checkpoint
from xlbtm.models import ModelArgs, build_model
from xlbtm.models.adapters import xlbtm_to_fairseq


def _args(**kw):
    # d_model*ffn sizes chosen so flat params are NOT divisible by the shard count (padding is exercised)
    base = dict(
        arch="xglm",
        vocab_size=101,
        d_model=36,
        n_layers=2,
        n_heads=4,
        ffn_dim=70,
        max_positions=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    base.update(kw)
    return ModelArgs(**base)


def _model(args, seed=0):
    torch.manual_seed(seed)
    m = build_model(args).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def test_fixture_padding_is_real():
    args = _args(vocab_size=102)
    part = split_model_parallel(xlbtm_to_fairseq(_model(args).state_dict(), args), 2)[0]
    _, metas = flatten_and_shard(part, 3)
    pads = [p["params"]["flat_param_0"]["padding"] for m in metas for p in m["param_metadata"]]
    assert any(pads), "fixture should exercise FSDP end padding"


@pytest.mark.parametrize("parts,shards", [(1, 2), (2, 2), (2, 3)])
def test_unflatten_matches_fairscale(tmp_path, parts, shards):
    fsdp = pytest.importorskip("fairscale.nn.data_parallel").FullyShardedDataParallel
    from xlbtm.models.safe_load import safe_torch_load

    args = _args(vocab_size=102 if parts == 2 else 101)
    m = _model(args)
    files = write_sharded_checkpoint(
        tmp_path / "checkpoint_last", m.state_dict(), args, model_parts=parts, shards=shards
    )
    assert len(files) == parts * shards
    found = find_checkpoint_files(files[-1])
    assert sorted(found) == list(range(parts)) and all(len(v) == shards for v in found.values())
    for mp in range(parts):
        cks = [safe_torch_load(found[mp][dp]) for dp in range(shards)]
        w = [c["model"] for c in cks]
        md = [c["shard_metadata"] for c in cks]
        ref = fsdp.consolidate_shard_weights(w, md)
        ours = consolidate_shard_weights(w, md)
        # fairscale copies shared params only for the last FSDP instance, so it misses the tied output
        # projection that metaseq shares at the root; everything it does produce must be identical
        assert set(ref) <= set(ours)
        assert set(ours) - set(ref) == {"decoder.output_projection.weight"}
        for k in ref:
            assert torch.equal(ref[k], ours[k]), k
        assert torch.equal(ours["decoder.output_projection.weight"], ours["decoder.embed_tokens.weight"])


def _assert_same_weights(ck, model, args):
    want = xlbtm_to_fairseq(model.state_dict(), args)
    assert set(ck.model) == set(want)
    for k, v in want.items():
        if "_float_tensor" in k:
            continue
        assert torch.equal(ck.model[k], v), k


def test_sharded_load_reconstructs_exact_state(tmp_path):
    args = _args(vocab_size=102)
    m = _model(args, seed=1)
    write_sharded_checkpoint(tmp_path / "checkpoint_last", m.state_dict(), args, model_parts=2, shards=2)
    ck = load_metaseq_checkpoint(tmp_path / "checkpoint_last")  # prefix form
    assert ck.num_model_parts == 2 and ck.num_shards == 2 and len(ck.files) == 4
    _assert_same_weights(ck, m, args)
    assert ck.cfg["decoder_attention_heads"] == 4  # read from an argparse.Namespace via the allow-list
    # the directory and any single shard name find the same set
    assert load_metaseq_checkpoint(tmp_path).files == ck.files
    assert load_metaseq_checkpoint(ck.files[2]).files == ck.files


def test_fused_qkv_is_kvq_order(tmp_path):
    """A fixture written with distinct q/k/v must come back with q/k/v in place (K, V, Q on disk)."""
    args = _args()
    m = _model(args, seed=2)
    sd = m.state_dict()
    parts = split_model_parallel(xlbtm_to_fairseq(sd, args), 2)
    fused = parts[1]["decoder.layers.0.self_attn.qkv_proj.weight"]
    half = args.d_model // 2
    assert torch.equal(fused[:half], sd["layers.0.self_attn.k_proj.weight"][half:])
    assert torch.equal(fused[2 * half :], sd["layers.0.self_attn.q_proj.weight"][half:])
    write_sharded_checkpoint(tmp_path / "ck", sd, args, model_parts=2, shards=1)
    got = load_metaseq_checkpoint(tmp_path / "ck").model
    for n in "qkv":
        assert torch.equal(
            got[f"decoder.layers.0.self_attn.{n}_proj.weight"], sd[f"layers.0.self_attn.{n}_proj.weight"]
        )
        assert torch.equal(got[f"decoder.layers.0.self_attn.{n}_proj.bias"], sd[f"layers.0.self_attn.{n}_proj.bias"])


def test_missing_shard_is_named(tmp_path):
    args = _args(vocab_size=102)
    files = write_sharded_checkpoint(
        tmp_path / "checkpoint_last", _model(args).state_dict(), args, model_parts=2, shards=2
    )
    files[1].unlink()  # model_part-0-shard1
    with pytest.raises(InputError, match=r"checkpoint_last-model_part-0-shard1\.pt is missing"):
        load_metaseq_checkpoint(files[0])


def test_no_match_is_clear_error(tmp_path):
    with pytest.raises(InputError, match="no metaseq checkpoint files"):
        load_metaseq_checkpoint(tmp_path / "nothing_here")


def test_safe_load_allows_namespace_and_refuses_other_objects(tmp_path):
    from xlbtm.models.safe_load import safe_torch_load

    ok = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(decoder_layers=2)}, ok)
    assert safe_torch_load(ok)["args"].decoder_layers == 2

    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "meter": _Meter()}, bad)
    with pytest.raises(InputError, match=r"contains .*_Meter"):
        safe_torch_load(bad)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pt"):
        safe_torch_load(junk)


class _Meter:  # stands in for fairseq's meter classes, which must never be unpickled
    def __init__(self):
        self.val = 1.0


def test_many_parts_and_shards_are_joined_in_numeric_order(tmp_path):
    """11 model parts x 12 FSDP shards: `model_part-10` / `shard10` sort before `-2` by name, so only a
    numeric order gives back the original weights."""
    parts, shards = 11, 12
    # every model-parallel split dimension divisible by 11 (torch.chunk would otherwise make fewer parts)
    args = _args(vocab_size=110, d_model=22, n_heads=2, ffn_dim=33, n_layers=1, max_positions=16)
    m = _model(args, seed=3)
    files = write_sharded_checkpoint(
        tmp_path / "checkpoint_last", m.state_dict(), args, model_parts=parts, shards=shards
    )
    assert len(files) == parts * shards and any("-model_part-10-shard11.pt" in f.name for f in files)
    ck = load_metaseq_checkpoint(tmp_path / "checkpoint_last")
    assert ck.num_model_parts == parts and ck.num_shards == shards
    _assert_same_weights(ck, m, args)
    assert [f.name for f in ck.files] == [
        f"checkpoint_last-model_part-{mp}-shard{dp}.pt" for mp in range(parts) for dp in range(shards)
    ]


def test_deprecated_metaseq_ext_names_still_import():
    """metaseq_ext's readers moved to xlbtm.formats; the old module names stay for one release."""
    import metaseq_ext.consolidated as old_consolidated
    import metaseq_ext.convert as old_convert
    import metaseq_ext.sharded as old_sharded
    from xlbtm.formats import consolidated, metaseq

    assert old_sharded.load_metaseq_checkpoint is metaseq.load_metaseq_checkpoint
    assert old_convert.metaseq_to_xlbtm is metaseq.metaseq_to_xlbtm
    assert old_consolidated.save_consolidated is consolidated.save_consolidated


@pytest.mark.parametrize("size", [0, 300])
def test_an_empty_or_truncated_checkpoint_is_one_line_with_the_remedy_in_every_command(tmp_path, capsys, size):
    """A zero-byte or cut-off .pt (an interrupted copy) is one line naming the file and how to rebuild it, exit
    status 2, for every command that reads one: convert, --seed-model, merge_experts, generate."""
    from xlbtm.cli import main_wrapper
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.models import build_model, get_preset
    from xlbtm.models.safe_load import safe_torch_load
    from xlbtm.scripts import convert, generate, train_experts

    write_demo_corpus(tmp_path / "data", n_train=20, n_valid=4)
    whole = tmp_path / "whole.pt"
    torch.save({"model": build_model(get_preset("debug", vocab_size=64)).state_dict()}, whole)
    bad = tmp_path / "run.cluster0" / "consolidated.pt"
    bad.parent.mkdir()
    bad.write_bytes(whole.read_bytes()[:size])
    with pytest.raises(InputError, match="consolidate RUN_DIR"):
        safe_torch_load(bad)
    runs = [
        (
            "convert",
            convert.main,
            ["--from", "xlbtm", "--to", "hf", "--input", str(bad), "--out", str(tmp_path / "hf")],
        ),
        (
            "train_experts",
            train_experts.main,
            [
                "--run",
                "debug",
                "--seed-model",
                str(bad),
                "--num-clusters",
                "1",
                "--serialization-dir",
                str(tmp_path / "ser"),
                "--max-steps",
                "1",
                "--path-to-data",
                str(tmp_path / "data"),
            ],
        ),
        ("generate", generate.main, ["--model-paths", str(bad), "--prompt", "x"]),
    ]
    for stage, main, argv in runs:
        assert main_wrapper(stage, main, argv) == 2, stage
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err, (stage, err)
