"""Checkpoint formats: HF dirs, consolidated.pt, metaseq/fairseq -> xlbtm -> HF round trips, seed loading,
converter CLIs."""

import argparse

import pytest
import torch
from tolerance import tensor_tol

from xlbtm.errors import InputError, UsageError
from xlbtm.formats.seed import load_seed
from xlbtm.models import ModelArgs, build_model
from xlbtm.models.adapters import hf_to_xlbtm, xlbtm_to_fairseq


def _args(arch="xglm", **kw):
    base = dict(
        arch=arch,
        vocab_size=102,
        d_model=32,
        n_layers=2,
        n_heads=4,
        ffn_dim=64,
        max_positions=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=(arch == "xglm"),
    )
    base.update(kw)
    return ModelArgs(**base)


def _model(args, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = build_model(args).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def _tokens(args, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, args.vocab_size, (2, 10), generator=g)


def _hf_from_dir(path, arch):
    from transformers import XGLMForCausalLM, XLMRobertaForMaskedLM

    cls = XGLMForCausalLM if arch == "xglm" else XLMRobertaForMaskedLM
    return cls.from_pretrained(str(path)).eval()


def _hf_logits(hf, x):
    with torch.no_grad():
        return hf(input_ids=x).logits


@pytest.mark.parametrize("arch", ["xglm", "xlmr"])
def test_save_hf_loads_in_transformers_with_parity(tmp_path, arch):
    from xlbtm.formats.hf import save_hf

    args = _args(arch)
    m = _model(args)
    save_hf(m, args, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    hf = _hf_from_dir(tmp_path / "hf", arch)
    x = _tokens(args)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref := _hf_logits(hf, x), **tensor_tol(ref))


@pytest.mark.parametrize("arch", ["xglm", "xlmr"])
def test_hf_to_xlbtm_to_hf_is_exact(tmp_path, arch):
    """HF model -> save_pretrained -> xlbtm (load_hf) -> consolidated.pt -> save_hf -> HF: identical logits."""
    from xlbtm.formats.consolidated import load_consolidated, save_consolidated
    from xlbtm.formats.hf import load_hf, save_hf
    from xlbtm.models.adapters import hf_config

    args = _args(arch)
    from transformers import XGLMForCausalLM, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    hf_a = (XGLMForCausalLM if arch == "xglm" else XLMRobertaForMaskedLM)(hf_config(args)).eval()
    with torch.no_grad():  # random LayerNorms and biases too
        for p in hf_a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf_a.save_pretrained(tmp_path / "a")
    sd, args2 = load_hf(tmp_path / "a")
    assert args2 == args.replace(init_std=args2.init_std)
    save_consolidated(tmp_path / "x.pt", sd, args2)
    sd3, args3, _ = load_consolidated(tmp_path / "x.pt")
    save_hf(sd3, args3, tmp_path / "b")
    hf_b = _hf_from_dir(tmp_path / "b", arch)
    x = _tokens(args)
    assert torch.equal(_hf_logits(hf_a, x), _hf_logits(hf_b, x))


@pytest.mark.parametrize("arch", ["xglm", "xlmr"])
def test_consolidated_round_trip_and_plain_torch_load(tmp_path, arch):
    from xlbtm.formats.consolidated import load_consolidated, save_consolidated

    args = _args(arch)
    m = _model(args)
    save_consolidated(tmp_path / "c.pt", m.state_dict(), args, extra={"cluster": 3, "step": 10})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # nothing but tensors and plain values
    prefix = "decoder." if arch == "xglm" else "encoder.sentence_encoder."
    assert any(k.startswith(prefix) for k in raw["model"])
    assert "decoder.layers.0.self_attn.q_proj.weight" in raw["model"] or arch == "xlmr"
    assert raw["cfg"]["model"]["decoder_layers" if arch == "xglm" else "encoder_layers"] == 2
    sd, args2, extra = load_consolidated(tmp_path / "c.pt")
    assert args2 == args and extra == {"cluster": 3, "step": 10}
    want = m.state_dict()
    assert set(sd) == set(want)
    for k in want:
        assert torch.equal(sd[k], want[k]), k


def test_metaseq_sharded_to_hf_preserves_logits_exactly(tmp_path):
    """metaseq 2 MP parts x 2 FSDP shards -> (CLI) HF dir: same logits as the HF model of the same weights."""
    from metaseq_writer import write_sharded_checkpoint

    from conversion.metaseq_to_hf import main
    from xlbtm.formats.hf import save_hf

    args = _args()
    m = _model(args, seed=4)
    write_sharded_checkpoint(tmp_path / "ck" / "checkpoint_last", m.state_dict(), args, model_parts=2, shards=2)
    main(
        ["--checkpoint", str(tmp_path / "ck" / "checkpoint_last-model_part-0-shard0.pt"), "--out", str(tmp_path / "hf")]
    )
    save_hf(m, args, tmp_path / "ref")
    x = _tokens(args)
    a = _hf_logits(_hf_from_dir(tmp_path / "hf", "xglm"), x)
    assert torch.equal(a, _hf_logits(_hf_from_dir(tmp_path / "ref", "xglm"), x))
    with torch.no_grad():
        torch.testing.assert_close(a, m(x), **tensor_tol(a))


def test_fairseq_xlmr_to_hf_cli(tmp_path):
    """fairseq XLM-R model.pt (legacy Namespace args, fused in_proj in Q,K,V order) -> HF masked LM."""
    from conversion.xlmr_to_hf import main

    args = _args("xlmr")
    m = _model(args, seed=5)
    sd = xlbtm_to_fairseq(m.state_dict(), args)
    pre = "encoder.sentence_encoder.layers.0.self_attn."
    for kind in ("weight", "bias"):  # old fairseq stored layer 0's projections fused
        sd[f"{pre}in_proj_{kind}"] = torch.cat([sd.pop(f"{pre}{n}_proj.{kind}") for n in "qkv"])
    ns = argparse.Namespace(
        arch="roberta_base",
        encoder_embed_dim=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_embed_dim=64,
        max_positions=32,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
    )
    torch.save({"model": sd, "args": ns, "cfg": None, "extra_state": {}}, tmp_path / "model.pt")
    main(["--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "hf")])
    hf = _hf_from_dir(tmp_path / "hf", "xlmr")
    x = _tokens(args)
    with torch.no_grad():
        torch.testing.assert_close(ref := _hf_logits(hf, x), m(x), **tensor_tol(ref))
    # the XLM-R converter refuses an XGLM checkpoint with a clear message
    from metaseq_writer import write_sharded_checkpoint

    xa = _args()
    write_sharded_checkpoint(tmp_path / "g", _model(xa).state_dict(), xa, model_parts=1, shards=1)
    with pytest.raises(InputError, match="xglm checkpoint, not xlmr"):
        main(["--checkpoint", str(tmp_path / "g-shard0.pt"), "--out", str(tmp_path / "hf2")])


def test_load_seed_every_kind(tmp_path):
    from metaseq_writer import write_sharded_checkpoint

    from xlbtm.formats.consolidated import save_consolidated
    from xlbtm.formats.hf import save_hf

    model, args, info = load_seed("debug", vocab_size=300)
    assert info["kind"] == "preset" and args.vocab_size == 300 and model.embed_tokens.weight.shape[0] == 300

    a = _args()
    m = _model(a, seed=6)
    x = _tokens(a)
    with torch.no_grad():
        want = m(x)
    save_hf(m, a, tmp_path / "hf")
    save_consolidated(tmp_path / "run" / "consolidated.pt", m.state_dict(), a)
    write_sharded_checkpoint(tmp_path / "ms" / "checkpoint_last", m.state_dict(), a, model_parts=2, shards=2)
    write_sharded_checkpoint(
        tmp_path / "nocfg" / "checkpoint_last", m.state_dict(), a, model_parts=1, shards=2, with_cfg=False
    )
    for spec, kind in (
        (tmp_path / "hf", "hf"),
        (tmp_path / "run", "xlbtm"),
        (tmp_path / "run" / "consolidated.pt", "xlbtm"),
        (tmp_path / "ms", "metaseq"),
        (tmp_path / "ms" / "checkpoint_last", "metaseq"),
    ):
        model, args, info = load_seed(spec, vocab_size=100)
        assert info["kind"] == kind, spec
        assert args.d_model == 32 and info["num_params"] > 0
        assert all(p.dtype == torch.float32 for p in model.parameters())
        with torch.no_grad():
            assert torch.equal(model.eval()(x), want), spec
        # adopted parameters are trainable and do not alias each other
        ptrs = [p.data_ptr() for p in model.parameters()]
        assert len(set(ptrs)) == len(ptrs)

    with pytest.raises(InputError, match="--model-size"):
        load_seed(tmp_path / "nocfg")
    from xlbtm.models.presets import PRESETS

    PRESETS["_test_small"] = dict(
        arch="xglm", vocab_size=102, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_positions=32
    )
    try:
        model, args, info = load_seed(tmp_path / "nocfg", model_size="_test_small")
        with torch.no_grad():
            assert torch.equal(model.eval()(x), want)
        with pytest.raises(UsageError, match="disagrees"):
            load_seed(tmp_path / "ms", model_size="debug")
    finally:
        del PRESETS["_test_small"]
    with pytest.raises(UsageError, match="tokenizer has 5000 tokens"):
        load_seed(tmp_path / "hf", vocab_size=5000)
    with pytest.raises(UsageError, match="not a preset"):
        load_seed("xglm-nonexistent/zzz")
    with pytest.raises(UsageError, match="xglm-564M"):  # a typo'd preset lists the real names
        load_seed(tmp_path / "xglm-564m")


def test_converter_clis_chain(tmp_path):
    """HF -> xlbtm seed -> metaseq consolidated -> HF, all via the CLIs; errors exit 2 with one line."""
    from conversion import hf_to_xlbtm, xlbtm_to_hf, xlbtm_to_metaseq
    from xlbtm.cli import main_wrapper
    from xlbtm.formats.hf import save_hf

    a = _args()
    m = _model(a, seed=7)
    save_hf(m, a, tmp_path / "hf")
    hf_to_xlbtm.main(["--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "seed.pt")])
    xlbtm_to_metaseq.main(
        ["--checkpoint", str(tmp_path / "seed.pt"), "--out", str(tmp_path / "ms.pt"), "--dtype", "fp16"]
    )
    raw = torch.load(tmp_path / "ms.pt", weights_only=True)
    assert raw["model"]["decoder.embed_tokens.weight"].dtype == torch.float16
    assert torch.equal(raw["model"]["decoder.output_projection.weight"], raw["model"]["decoder.embed_tokens.weight"])
    xlbtm_to_hf.main(["--checkpoint", str(tmp_path / "seed.pt"), "--out", str(tmp_path / "hf2")])
    x = _tokens(a)
    assert torch.equal(
        _hf_logits(_hf_from_dir(tmp_path / "hf", "xglm"), x), _hf_logits(_hf_from_dir(tmp_path / "hf2", "xglm"), x)
    )
    rc = main_wrapper(
        "convert", xlbtm_to_hf.main, ["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2


def test_save_hf_with_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from xlbtm.formats.hf import save_hf
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    texts = [f"hello world number {i} bonjour le monde {i * 7} hola mundo" for i in range(200)]
    tok_dir = train_sentencepiece(texts, tmp_path / "tok", vocab_size=60)
    tok = load_tokenizer(tok_dir)
    a = _args(vocab_size=tok.vocab_size)
    save_hf(_model(a), a, tmp_path / "hf", tokenizer_dir=tok_dir)
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok("hello world", add_special_tokens=False)["input_ids"] == tok.encode("hello world")
    with pytest.raises(InputError, match="tokenizer has"):
        small = _args(vocab_size=tok.vocab_size - 1)
        save_hf(_model(small), small, tmp_path / "hf3", tokenizer_dir=tok_dir)


def test_untied_or_unknown_metaseq_keys_are_refused():
    from xlbtm.models.adapters import fairseq_to_xlbtm

    a = _args()
    sd = xlbtm_to_fairseq(_model(a).state_dict(), a)
    sd["decoder.output_projection.weight"] = sd["decoder.output_projection.weight"] + 1
    with pytest.raises(ValueError, match="untied"):
        fairseq_to_xlbtm(sd, "xglm")
    sd = xlbtm_to_fairseq(_model(a).state_dict(), a)
    sd["decoder.layers.0.ffn_layernorm.weight"] = torch.ones(3)
    with pytest.raises(KeyError, match="ffn_layernorm"):
        fairseq_to_xlbtm(sd, "xglm")
    with pytest.raises(KeyError, match="unexpected XGLM key"):
        hf_to_xlbtm({"transformer.h.0.weight": torch.ones(1)}, "xglm")


def test_plain_fairseq_xglm_file_fp16(tmp_path):
    """A released fairseq/metaseq XGLM model.pt: one file, fp16, cfg["model"] an argparse.Namespace."""
    a = _args()
    m = _model(a, seed=8)
    sd = {k: v.half() for k, v in xlbtm_to_fairseq(m.state_dict(), a).items()}
    ns = argparse.Namespace(**a.to_fairseq())
    torch.save(
        {"model": sd, "cfg": {"model": ns, "common": {"fp16": True}}, "extra_state": {"val_loss": 3.0}},
        tmp_path / "model.pt",
    )
    model, args, info = load_seed(tmp_path / "model.pt")
    assert info["kind"] == "metaseq" and args == a.replace(extra={})
    assert model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(model.embed_tokens.weight, m.embed_tokens.weight.half().float())


def test_one_convert_command_for_every_pair(tmp_path, capsys):
    """`python -m xlbtm.scripts.convert --from X --to Y` (also `xlbtm convert`): metaseq shards -> HF ->
    xlbtm -> metaseq keeps the logits bit for bit; --arch refuses another architecture; bad flags exit 2."""
    from metaseq_writer import write_sharded_checkpoint

    from xlbtm.cli import main_wrapper
    from xlbtm.formats.consolidated import load_consolidated
    from xlbtm.scripts.__main__ import main as xlbtm_main
    from xlbtm.scripts.convert import main

    a = _args()
    m = _model(a, seed=8)
    write_sharded_checkpoint(tmp_path / "ms" / "checkpoint_last", m.state_dict(), a, model_parts=2, shards=2)
    assert (
        main(["--from", "metaseq", "--to", "hf", "--input", str(tmp_path / "ms"), "--out", str(tmp_path / "hf")]) == 0
    )
    assert (
        xlbtm_main(
            [
                "convert",
                "--from",
                "hf",
                "--to",
                "xlbtm",
                "--input",
                str(tmp_path / "hf"),
                "--out",
                str(tmp_path / "seed.pt"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--from",
                "xlbtm",
                "--to",
                "metaseq",
                "--input",
                str(tmp_path / "seed.pt"),
                "--out",
                str(tmp_path / "back.pt"),
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    sd, args, extra = load_consolidated(tmp_path / "back.pt")
    assert args == a and extra["source_format"] == "hf"
    for k, v in m.state_dict().items():
        assert torch.equal(sd[k], v), k
    x = _tokens(a)
    with torch.no_grad():
        torch.testing.assert_close(ref := _hf_logits(_hf_from_dir(tmp_path / "hf", "xglm"), x), m(x), **tensor_tol(ref))
    capsys.readouterr()
    rc = main_wrapper(
        "convert",
        main,
        [
            "--from",
            "metaseq",
            "--to",
            "hf",
            "--arch",
            "xlmr",
            "--input",
            str(tmp_path / "ms"),
            "--out",
            str(tmp_path / "hf2"),
        ],
    )
    assert rc == 2 and "xglm checkpoint, not xlmr" in capsys.readouterr().err and not (tmp_path / "hf2").exists()
    rc = main_wrapper(
        "convert",
        main,
        ["--from", "hf", "--to", "hf", "--input", str(tmp_path / "hf"), "--out", str(tmp_path / "hf" / "inner")],
    )
    assert rc == 2 and "--out" in capsys.readouterr().err  # an output inside the input is refused


def test_expert_json_has_one_reader_and_old_files_still_read(tmp_path):
    """expert.json through xlbtm.formats.expert only: an expert.json as the first release wrote it (no `data`)
    reads, the ensemble's reader and the trainer's agree, and a foreign format or a missing field is one error."""
    import json

    from xlbtm.ensemble.experts import read_expert
    from xlbtm.formats.expert import EXPERT_JSON, read_expert_info

    old = {
        "format": "xlbtm-expert/1",
        "cluster": 3,
        "num_clusters": 8,
        "clusterer_fingerprint": "abc",
        "objective": "clm",
        "model_args": _args().to_dict(),
        "tokenizer": "/tok",
        "tokenizer_fingerprint": "t",
        "seed_model": "xglm-564M",
        "run_name": "c4",
    }
    (tmp_path / EXPERT_JSON).write_text(json.dumps(old))
    info = read_expert_info(tmp_path)
    assert (info.cluster, info.num_clusters, info.data) == (3, 8, {})
    assert read_expert(tmp_path).info == info.to_dict()
    (tmp_path / EXPERT_JSON).write_text(json.dumps({k: v for k, v in old.items() if k != "model_args"}))
    with pytest.raises(InputError, match="expert.json lacks model_args"):
        read_expert(tmp_path)
    (tmp_path / EXPERT_JSON).write_text(json.dumps({**old, "format": "metaseq"}))
    with pytest.raises(InputError, match="not an xlbtm expert.json"):
        read_expert(tmp_path)


def _expert_info(k: int, K: int, run_name: str = "demo", **kw):
    from xlbtm.formats.expert import ExpertInfo

    return ExpertInfo(
        cluster=k,
        num_clusters=K,
        clusterer_fingerprint="fp",
        objective="clm",
        model_args={"arch": "xglm"},
        tokenizer="/t",
        tokenizer_fingerprint="tf",
        seed_model="debug",
        run_name=run_name,
        **kw,
    )


def test_run_layout_names_every_path_of_an_experts_dir(tmp_path):
    """formats.layout owns `<serialization_dir>/<K>_clusters/<run>.cluster<k>/` and what lies in it."""
    from xlbtm.formats.layout import RunLayout, checkpoints_dir, consolidated_path, hf_dir, train_log_path

    layout = RunLayout.of(tmp_path, 12)
    run = layout.run_dir("c4", 3)
    assert layout.root == tmp_path / "12_clusters" and run == tmp_path / "12_clusters" / "c4.cluster3"
    assert (consolidated_path(run), hf_dir(run), checkpoints_dir(run), train_log_path(run)) == (
        run / "consolidated.pt",
        run / "hf",
        run / "checkpoints",
        run / "train_log.jsonl",
    )
    assert layout.logs_dir == layout.root / "logs"
    assert layout.binarized_dir("c4", "0123456789abcdef") == layout.root / "data-bin" / "c4.0123456789ab"
    assert layout.binarized_dir(None, "0123456789abcdef") == layout.root / "data-bin" / "data.0123456789ab"
    assert layout.grown_dir("fedcba9876543210") == layout.root / "grown" / "fedcba987654"


def test_experts_are_listed_by_their_cluster_index_never_by_folder_name_at_K_12(tmp_path):
    """At K >= 10 folder names sort cluster10 before cluster2; the listing follows expert.json's index and
    hands out the typed ExpertInfo."""
    from xlbtm.ensemble.experts import find_experts
    from xlbtm.formats.expert import ExpertInfo, write_expert_info
    from xlbtm.formats.layout import RunLayout, find_expert_dirs, list_experts

    layout = RunLayout.of(tmp_path, 12)
    for k in (5, 11, 0, 10, 2, 1, 3, 4, 6, 7, 8, 9):
        write_expert_info(layout.run_dir("demo", k), _expert_info(k, 12))
    layout.binarized_dir("demo", "0123456789abcdef").mkdir(parents=True)  # not an expert
    names = [f"demo.cluster{k}" for k in range(12)]
    assert sorted(names) != names  # what name order would give
    found = list_experts(layout.root)
    assert [e.info.cluster for e in found] == list(range(12))
    assert [e.run_dir.name for e in found] == names and all(isinstance(e.info, ExpertInfo) for e in found)
    assert [p.name for p in find_expert_dirs(tmp_path)] == names  # from the serialization dir too
    assert layout.experts() == found
    assert [e.cluster for e in find_experts(layout.root)] == list(range(12))
    assert list_experts(layout.run_dir("demo", 10)) == [found[10]]  # a run dir lists itself
    assert list_experts(tmp_path / "missing") == []
