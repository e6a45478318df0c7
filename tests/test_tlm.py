"""Parallel data and translation language modeling (#18): the pair reader, binarized pairs, the TLM example
layout, packing, the MLM+TLM mix, XLM-R with explicit positions, and TLM / MLM+TLM training with resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from parallel_helpers import WORDS, write_mono, write_pairs


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    from xlbtm.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("tlm")
    pairs = write_pairs(root / "pairs")
    write_pairs(root / "pairs", n=8, split="valid")
    mono = write_mono(root / "mono")
    texts = [" ".join(w) for w in WORDS.values()] * 20
    tok = train_sentencepiece(texts, root / "tok", vocab_size=80)
    return root, pairs, mono, tok


@pytest.fixture(scope="module")
def binarized_pairs(corpora):
    from xlbtm.data.binarize import binarize_pairs
    from xlbtm.tokenizer import load_tokenizer

    root, pairs, _, tok = corpora
    out = root / "bin" / "parallel"
    binarize_pairs(pairs, out, load_tokenizer(tok), splits=["train", "valid"])
    return out


# ------------------------------------------------------------------------------------------ the reader


def test_parallel_reader_reads_pairs_with_sp_ids(tmp_path):
    from xlbtm.corpus import Corpus

    d = tmp_path / "train" / "00000"
    d.mkdir(parents=True)
    first = b'{"src": "house", "tgt": "Haus", "src_lang": "en", "tgt_lang": "de"}\n'
    (d / "de.jsonl").write_bytes(b"\xef\xbb\xbf" + first + b"\n" + b'{"src": "tree", "tgt": "Baum"}\n')
    corpus = Corpus(tmp_path)
    got = list(corpus.iter_pairs("train"))
    assert [(p.sp_id, p.src, p.tgt, p.src_lang, p.tgt_lang) for p in got] == [
        ("train/00000/de.jsonl|0", "house", "Haus", "en", "de"),
        ("train/00000/de.jsonl|2", "tree", "Baum", None, None),
    ]
    assert corpus.stats.documents == 2 and corpus.stats.blank == 1


@pytest.mark.parametrize(
    "line, why",
    [
        (b'{"tgt": "Haus"}', "missing required field 'src'"),
        (b'{"src": "house"}', "missing required field 'tgt'"),
        (b'{"src": "house", "tgt": 3}', "field 'tgt' must be a string"),
        (b'{"src": "  ", "tgt": "Haus"}', "field 'src' is empty"),
        (b'{"src": "house", "tgt": ""}', "field 'tgt' is empty"),
        (b'{"src": "house", "tgt": "Haus"', "malformed JSON"),
        (b'["house", "Haus"]', "expected a JSON object"),
        (b'{"src": "h\xffuse", "tgt": "Haus"}', "invalid UTF-8"),
        (b'{"src": "\\ud800", "tgt": "Haus"}', "lone surrogate"),
    ],
)
def test_parallel_reader_bad_inputs_name_file_and_line(tmp_path, line, why):
    from xlbtm.corpus import Corpus
    from xlbtm.errors import InputError

    d = tmp_path / "train" / "00000"
    d.mkdir(parents=True)
    f = d / "de.jsonl"
    f.write_bytes(b'{"src": "tree", "tgt": "Baum"}\n' + line + b'\n{"src": "fire", "tgt": "Feuer"}\n')
    with pytest.raises(InputError, match=f"{f}:2: .*{why}"):
        list(Corpus(tmp_path).iter_pairs("train"))
    corpus = Corpus(tmp_path, skip_bad_lines=True)  # the monolingual reader's --skip-bad-lines semantics
    assert [p.sp_id.rsplit("|", 1)[1] for p in corpus.iter_pairs("train")] == ["0", "2"]
    assert corpus.stats.skipped == 1 and why in corpus.stats.examples[0]


def test_parallel_split_without_pairs_is_an_error(tmp_path):
    from xlbtm.corpus import Corpus
    from xlbtm.errors import InputError

    d = tmp_path / "train" / "00000"
    d.mkdir(parents=True)
    (d / "de.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no translation pairs"):
        list(Corpus(tmp_path).iter_pairs("train"))


# ------------------------------------------------------------------------------------ binarized pairs


def test_binarized_pairs_hold_every_side_and_resume(corpora, binarized_pairs, caplog):
    from xlbtm.corpus import Corpus
    from xlbtm.data.binarize import binarize_pairs
    from xlbtm.data.dataset import PairStream
    from xlbtm.formats.pairs import read_pairs_manifest
    from xlbtm.tokenizer import load_tokenizer

    root, pairs, _, tok_dir = corpora
    tok = load_tokenizer(tok_dir)
    man = read_pairs_manifest(binarized_pairs)
    assert man["format"] == "xlbtm-pairs/2" and man["splits"]["train"]["pairs"] == 80
    assert man["splits"]["train"]["langs"] == {"en-de": 40, "en-fr": 40}
    ps = PairStream(binarized_pairs, "train")
    want = list(Corpus(pairs).iter_pairs("train"))
    assert len(ps) == len(want)
    for i in (0, 41, 79):
        src, tgt = ps.pair(i)
        assert src.tolist() == tok.encode(want[i].src) and tgt.tolist() == tok.encode(want[i].tgt)
    before = (binarized_pairs / "train" / "src.bin").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        binarize_pairs(pairs, binarized_pairs, tok, splits=["train"])
    assert "already done" in caplog.text
    assert (binarized_pairs / "train" / "src.bin").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------- the examples


def _tlm(binarized_pairs, tok_dir, tps, **kw):
    from xlbtm.data.dataset import PairStream, TLMDataset
    from xlbtm.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    return tok, TLMDataset(
        PairStream(binarized_pairs, "train"),
        tps,
        vocab_size=tok.vocab_size,
        mask_id=tok.mask_id,
        bos_id=tok.bos_id,
        pad_id=tok.pad_id,
        eos_id=tok.eos_id,
        seed=3,
        **kw,
    )


def test_tlm_example_layout_positions_and_masks_on_both_sides(corpora, binarized_pairs):
    from xlbtm.data.dataset import PairStream

    _, _, _, tok_dir = corpora
    tok, ds = _tlm(binarized_pairs, tok_dir, 64, mask_prob=0.5)
    ps = PairStream(binarized_pairs, "train")
    s, e, p = tok.bos_id, tok.eos_id, tok.pad_id
    first = p + 1  # XLM-R positions start at pad + 1
    x, y, pos = ds.get(0, global_index=11)
    j0, j1 = int(ds.starts[0]), int(ds.starts[1])
    assert j1 - j0 >= 2  # short pairs: several in one sample
    tokens, positions, side = [], [], []
    for j in range(j0, j1):
        src, tgt = (a.tolist() for a in ps.pair(j))
        tokens += [s, *src, e, e, *tgt, e]
        positions += list(range(first, first + len(src) + 2)) + list(range(first, first + len(tgt) + 2))
        side += ["sp"] + ["src"] * len(src) + ["sp", "sp"] + ["tgt"] * len(tgt) + ["sp"]
    n = len(tokens)
    tokens += [p] * (64 - n)
    positions += [p] * (64 - n)
    side += ["pad"] * (64 - n)
    original = np.where(y != -100, y, x)
    assert original.tolist() == tokens
    assert pos.tolist() == positions  # restarting at every pair's second side
    side = np.asarray(side)
    masked = y != -100
    assert not masked[side == "sp"].any() and not masked[side == "pad"].any()  # never a special token or padding
    assert masked[side == "src"].any() and masked[side == "tgt"].any()  # both sides carry targets
    assert (x[side == "sp"] == np.asarray(tokens)[side == "sp"]).all() and (x[side == "pad"] == p).all()
    assert (x[masked] == tok.mask_id).mean() > 0.5  # 80/10/10
    x2, y2, pos2 = ds.get(0, global_index=11)  # masks are a function of (seed, global index)
    assert (x2 == x).all() and (y2 == y).all()
    assert not (ds.get(0, global_index=12)[1] == y).all()


def test_tlm_packing_covers_every_pair_once_and_truncates_long_pairs(corpora, binarized_pairs):
    from xlbtm.data.dataset import PairStream

    _, _, _, tok_dir = corpora
    tok, ds = _tlm(binarized_pairs, tok_dir, 48)
    assert ds.starts[0] == 0 and ds.starts[-1] == len(ds.pairs) and (np.diff(ds.starts) >= 1).all()
    for i in range(len(ds)):
        x, y, pos = ds.get(i, i)
        assert x.shape == y.shape == pos.shape == (48,)
        n_pairs = int(ds.starts[i + 1] - ds.starts[i])
        assert int(((np.where(y != -100, y, x)) == tok.bos_id).sum()) == n_pairs
    # a sample smaller than a pair: each side keeps a prefix, room shared by the sides' lengths
    _, small = _tlm(binarized_pairs, tok_dir, 10)
    ps = PairStream(binarized_pairs, "train")
    long_j = max(range(len(ps)), key=lambda j: sum(map(len, ps.pair(j))))
    src, tgt = ps.pair(long_j)
    a, b = small.sides(long_j)
    assert len(a) + len(b) == 6 and len(a) >= 1 and len(b) >= 1
    assert a.tolist() == src[: len(a)].tolist() and b.tolist() == tgt[: len(b)].tolist()
    assert abs(len(a) / 6 - len(src) / (len(src) + len(tgt))) <= 1 / 6 + 1e-9
    assert int(np.diff(small.starts).max()) == 1 or len(small) == len(ps)
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError, match="too small for TLM"):
        _tlm(binarized_pairs, tok_dir, 5)


def test_mlm_tlm_ratio_is_honoured_and_a_pure_function_of_seed_and_index(corpora, binarized_pairs, tmp_path):
    from xlbtm.data.binarize import binarize
    from xlbtm.data.dataset import MLMDataset, MLMTLMDataset, Sampler, TokenStream, default_positions
    from xlbtm.formats.binarized import bin_path
    from xlbtm.tokenizer import load_tokenizer

    root, _, mono, tok_dir = corpora
    tok = load_tokenizer(tok_dir)
    binarize(mono, tmp_path / "bin", tok, workers=0)
    _, tlm = _tlm(binarized_pairs, tok_dir, 32)

    def mixed(seed, ratio):
        mlm = MLMDataset(
            TokenStream(bin_path(tmp_path / "bin", "train", 0)),
            32,
            vocab_size=tok.vocab_size,
            mask_id=tok.mask_id,
            bos_id=tok.bos_id,
            seed=seed,
        )
        return MLMTLMDataset(mlm, tlm, ratio, seed)

    R, N = 0.3, 1000
    ds = mixed(1, R)
    choice = [ds.is_tlm(g) for g in range(N)]
    share = sum(choice) / N
    assert abs(share - R) < 4 * math.sqrt(R * (1 - R) / N), share  # binomial: 4 standard deviations
    assert [mixed(1, R).is_tlm(g) for g in range(N)] == choice  # the same for any instance (a resume)
    assert [mixed(2, R).is_tlm(g) for g in range(N)] != choice  # and depends on the seed
    assert [ds.is_tlm(g) for g in reversed(range(N))] == choice[::-1]  # not on the order of the draws
    assert not any(mixed(1, 0.0).is_tlm(g) for g in range(200)) and all(mixed(1, 1.0).is_tlm(g) for g in range(200))
    sampler = Sampler(len(ds), 1)
    for g in (0, 1, 2, 3, 500):
        x, y, pos = ds.get(sampler.item(g), g)
        x2, y2, pos2 = mixed(1, R).get(sampler.item(g), g)
        assert (x == x2).all() and (y == y2).all() and (pos == pos2).all()
        if not choice[g]:  # MLM samples: the MLM dataset's own sample, XLM-R's default positions
            mx, my = ds.mlm.get(sampler.item(g), g)
            assert (mx == x).all() and (pos == default_positions(32, tok.pad_id)).all()
        else:
            assert (tok.pad_id == pos).any() or (pos[1:] < pos[:-1]).any()  # restarts: a TLM sample


# --------------------------------------------------------------------------------------------- the model


def test_xlmr_explicit_positions_match_hf_position_ids_and_default_path_is_unchanged():
    from test_models import _pair

    args, ours, hf = _pair("xlmr")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, args.vocab_size, (2, 10), generator=g)
    x[1, 8:] = args.pad_id
    pad = x.eq(args.pad_id)
    first = args.pad_id + 1
    pos = torch.tensor(
        [
            list(range(first, first + 5)) * 2,
            list(range(first, first + 4)) + list(range(first, first + 4)) + [args.pad_id] * 2,
        ]
    )
    with torch.no_grad():
        a = ours(x, pad, positions=pos)
        b = hf(input_ids=x, attention_mask=(~pad).long(), position_ids=pos).logits
        torch.testing.assert_close(a[~pad], b[~pad], atol=1e-4, rtol=1e-4)
        # default positions given explicitly are the default path, bit for bit
        torch.testing.assert_close(ours(x[:1], positions=ours.positions(x[:1])), ours(x[:1]), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------- training


def _argv(corpora, ser, objective, *extra):
    root, pairs, mono, tok = corpora
    argv = [
        "--run",
        "debug",
        "--seed-model",
        "debug-xlmr",
        "--tokenizer",
        str(tok),
        "--num-clusters",
        "1",
        "--serialization-dir",
        str(ser),
        "--objective",
        objective,
        "--parallel-data",
        str(pairs),
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--tokens-per-sample",
        "32",
        "--learning-rate",
        "3e-3",
        "--save-interval-updates",
        "3",
        "--validate-interval-updates",
        "3",
        "--log-interval",
        "1",
        "--binarize-workers",
        "0",
        "--dropout",
        "0.1",
        "--data-name",
        "t",
        *extra,
    ]
    if objective != "tlm":
        argv += ["--path-to-data", str(mono)]
    return argv


def test_tlm_expert_trains_on_parallel_data_only(corpora, tmp_path, capsys):
    from train_helpers import train_losses

    from xlbtm.formats.expert import read_expert_info
    from xlbtm.scripts.train_experts import main

    ser = tmp_path / "ser"
    assert main(_argv(corpora, ser, "tlm", "--max-steps", "10", "--learning-rate", "1e-2")) == 0
    out = capsys.readouterr().out
    assert "parallel data:" in out and "(none: parallel data only)" in out and "completed at step 10" in out
    run = ser / "1_clusters" / "t.cluster0"
    info = read_expert_info(run)
    assert info.objective == "mlm" and info.data["config"]["objective"] == "tlm"  # scored as a masked LM
    assert info.data["pairs"].endswith("parallel") and info.model_args["arch"] == "xlmr"
    losses = train_losses(run)
    assert losses[10] < losses[1]
    from xlbtm.train.metrics import read_train_log

    assert [r for r in read_train_log(run) if r["kind"] == "valid"]  # the parallel data's valid split


@pytest.mark.slow  # two in-process runs
def test_mlm_tlm_resume_is_exact(corpora, tmp_path, capsys):
    """Train 6 steps (checkpoints at 3 and 6); roll the run back to step 3 and rerun the same command: it
    resumes there and ends bitwise equal to the uninterrupted run (dropout 0.1, masks and mix by index)."""
    from train_helpers import final_weights, train_losses

    from xlbtm.scripts.train_experts import main

    ser = tmp_path / "ser"
    argv = _argv(corpora, ser, "mlm+tlm", "--tlm-ratio", "0.5")
    assert main(argv) == 0
    run = ser / "1_clusters" / "t.cluster0"
    ref_w, ref_losses = final_weights(run), train_losses(run)
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_6")
    (run / "checkpoints" / "latest").write_text("step_3\n")
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumes from step_3" in capsys.readouterr().out
    w = final_weights(run)
    for k in ref_w:
        torch.testing.assert_close(w[k], ref_w[k], atol=0, rtol=0, msg=k)
    assert train_losses(run) == ref_losses


@pytest.mark.parametrize(
    "change, msg",
    [
        ({"--seed-model": "debug"}, "needs a xlmr model, but the seed debug is xglm (translation language modeling"),
        ({"--parallel-data": None}, "needs --parallel-data"),
        ({"--path-to-data": "MONO"}, "leave out --path-to-data"),
        ({"--num-clusters": "2"}, "needs --path-to-parallel-clusters-dir"),
        ({"--objective": "mlm"}, "--parallel-data is only read by --objective tlm or mlm+tlm"),
        ({"--objective": "mlm+tlm", "--tlm-ratio": "1.5"}, "--tlm-ratio must be in [0, 1]"),
        ({"--parallel-data": "EMPTY"}, "expected --parallel-data <dir>/train/"),
    ],
)
def test_tlm_bad_flags_exit_2(corpora, tmp_path, capsys, change, msg):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.train_experts import main

    argv = _argv(corpora, tmp_path / "s", "tlm", "--dry-run")
    for flag, value in change.items():
        if flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
        if value is not None:
            argv += [flag, {"MONO": str(corpora[2]), "EMPTY": str(tmp_path)}.get(value, value)]
    if change.get("--objective") in ("mlm", "mlm+tlm"):
        argv += ["--path-to-data", str(corpora[2])]
    assert main_wrapper("train_experts", main, argv) == 2
    assert msg in capsys.readouterr().err


def test_path_to_data_is_required_unless_the_objective_is_tlm(corpora, tmp_path, capsys):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.train_experts import main

    argv = _argv(corpora, tmp_path / "s", "tlm", "--dry-run")
    i = argv.index("--objective")
    argv[i + 1] = "mlm+tlm"  # _argv adds --path-to-data only for objectives other than tlm
    assert main_wrapper("train_experts", main, argv) == 2
    assert "--path-to-data is required with --objective mlm+tlm" in capsys.readouterr().err


GETTEXT = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "gettext"


@pytest.mark.skipif(not (GETTEXT / "train").is_dir(), reason="the gettext corpus is not here")
def test_gettext_corpus_reads_as_parallel_data():
    """Smoke: the real English -> 16-language corpus reads without a bad line."""
    from xlbtm.corpus import Corpus

    corpus = Corpus(GETTEXT)
    langs = set()
    for p in corpus.iter_pairs("valid"):
        langs.add((p.src_lang, p.tgt_lang))
    assert corpus.stats.skipped == 0 and len(langs) >= 2 and all(s == "en" for s, _ in langs)
