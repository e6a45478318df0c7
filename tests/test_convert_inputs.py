"""convert against hostile inputs (issue 27): it never replaces another run's output, refuses tensors that do not
fit the architecture the file claims (in every reader, both directions), and every bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from xlbtm.cli import main_wrapper
from xlbtm.errors import InputError
from xlbtm.formats.consolidated import load_consolidated, save_consolidated
from xlbtm.formats.hf import load_hf, save_hf
from xlbtm.formats.seed import load_seed, seed_args
from xlbtm.models import ModelArgs, build_model
from xlbtm.scripts.convert import main as convert_main


def _args() -> ModelArgs:
    return ModelArgs(
        arch="xglm", vocab_size=40, d_model=16, n_layers=2, n_heads=2, ffn_dim=32, max_positions=16, dropout=0.0
    )


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return build_model(_args()).state_dict()


def _convert(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main_wrapper("convert", convert_main, [str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_line_error(rc: int, err: str) -> str:
    """The error line of a refused run: exit 2, `xlbtm convert: error: ...`, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("xlbtm convert: error: "), err
    return line


def test_convert_does_not_replace_another_runs_output(tmp_path, capsys):
    """`convert --out` another expert's consolidated.pt (or HF dir) is refused and leaves it byte for byte;
    its own earlier output for the same --input is replaced; for another --input it is refused too."""
    a = _args()
    save_hf(_state(1), a, tmp_path / "src_hf")
    run = tmp_path / "run.cluster0"
    save_consolidated(run / "consolidated.pt", _state(2), a, extra={"expert": {"run_name": "other"}})
    save_hf(_state(2), a, run / "hf")
    before = (run / "consolidated.pt").read_bytes(), (run / "hf" / "model.safetensors").read_bytes()

    line = _one_line_error(
        *_convert(
            capsys, "--from", "hf", "--to", "xlbtm", "--input", tmp_path / "src_hf", "--out", run / "consolidated.pt"
        )
    )
    assert "--out" in line and "not an output of convert" in line
    line = _one_line_error(
        *_convert(capsys, "--from", "hf", "--to", "hf", "--input", tmp_path / "src_hf", "--out", run / "hf")
    )
    assert "not an output of convert" in line
    assert ((run / "consolidated.pt").read_bytes(), (run / "hf" / "model.safetensors").read_bytes()) == before

    # its own output: a rerun (another --dtype is a setting, not an input) replaces it, in both targets
    for target, out in (("xlbtm", tmp_path / "mine.pt"), ("hf", tmp_path / "mine_hf")):
        for dtype in ("keep", "fp16"):
            rc, err = _convert(
                capsys, "--from", "hf", "--to", target, "--input", tmp_path / "src_hf", "--out", out, "--dtype", dtype
            )
            assert rc == 0, err
    assert load_consolidated(tmp_path / "mine.pt")[0]["layers.0.fc1.weight"].dtype == torch.float16
    # ... but convert of another model into it is refused: the other model's input is named
    save_hf(_state(3), a, tmp_path / "other_hf")
    line = _one_line_error(
        *_convert(
            capsys, "--from", "hf", "--to", "xlbtm", "--input", tmp_path / "other_hf", "--out", tmp_path / "mine.pt"
        )
    )
    assert "convert's output for other inputs" in line and "other_hf" in line


def test_shapes_that_do_not_fit_the_architecture_are_refused_both_ways(tmp_path, capsys):
    """An HF dir whose layers.0.fc1.weight is (35, 16) against a config saying ffn_dim 32 converted both ways
    with exit 0; now every reader refuses it, naming the file, the tensor as the file names it, both shapes."""
    a = _args()
    hf = tmp_path / "hf"
    save_hf(_state(1), a, hf)
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["model.layers.0.fc1.weight"] = torch.zeros(35, 16)
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})

    line = _one_line_error(
        *_convert(capsys, "--from", "hf", "--to", "xlbtm", "--input", hf, "--out", tmp_path / "x.pt")
    )
    assert "model.safetensors" in line and "model.layers.0.fc1.weight is (35, 16), expected (32, 16)" in line
    assert "config.json" in line and not (tmp_path / "x.pt").exists()
    for read in (lambda: load_hf(hf), lambda: load_seed(hf), lambda: seed_args(hf)):  # seed_args: header only
        with pytest.raises(InputError, match=r"fc1\.weight is \(35, 16\), expected \(32, 16\)"):
            read()

    # the other direction: a consolidated.pt whose tensor disagrees with its header's model_args
    good = tmp_path / "good.pt"
    save_consolidated(good, _state(1), a)
    ck = torch.load(good, weights_only=True)
    ck["model"]["decoder.layers.1.fc1.weight"] = torch.zeros(35, 16)
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    line = _one_line_error(*_convert(capsys, "--from", "xlbtm", "--to", "hf", "--input", bad, "--out", tmp_path / "o"))
    assert "decoder.layers.1.fc1.weight is (35, 16), expected (32, 16)" in line and not (tmp_path / "o").exists()
    # ... and the same file read as plain metaseq (cfg vs tensors): a later layer than the sizes are read from
    del ck["xlbtm"]
    torch.save(ck, bad)
    line = _one_line_error(
        *_convert(capsys, "--from", "metaseq", "--to", "hf", "--input", bad, "--out", tmp_path / "o")
    )
    assert "decoder.layers.1.fc1.weight is (35, 16), expected (32, 16)" in line and not (tmp_path / "o").exists()


def test_every_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    a = _args()
    hf = tmp_path / "hf"
    save_hf(_state(1), a, hf)
    pt = tmp_path / "m.pt"
    save_consolidated(pt, _state(1), a)

    def refused(*argv) -> str:
        return _one_line_error(*_convert(capsys, *argv))

    # --from hf given a .pt file (was NotADirectoryError)
    assert "not a Hugging Face directory" in refused(
        "--from", "hf", "--to", "xlbtm", "--input", pt, "--out", tmp_path / "a.pt"
    )
    # a truncated model.safetensors (was SafetensorError)
    trunc = tmp_path / "trunc"
    save_hf(_state(1), a, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "unreadable safetensors" in refused(
        "--from", "hf", "--to", "xlbtm", "--input", trunc, "--out", tmp_path / "a.pt"
    )
    # a safetensors file without one of the tensors
    missing = tmp_path / "missing"
    save_hf(_state(1), a, missing)
    tensors = load_file(str(missing / "model.safetensors"))
    del tensors["model.layers.1.fc2.bias"]
    save_file(tensors, str(missing / "model.safetensors"))
    assert "missing model.layers.1.fc2.bias" in refused(
        "--from", "hf", "--to", "xlbtm", "--input", missing, "--out", tmp_path / "a.pt"
    )
    # config.json missing, not JSON, not an object
    cfg = tmp_path / "cfg"
    save_hf(_state(1), a, cfg)
    (cfg / "config.json").unlink()
    assert "no config.json" in refused("--from", "hf", "--to", "xlbtm", "--input", cfg, "--out", tmp_path / "a.pt")
    (cfg / "config.json").write_text("{not json")
    assert "malformed JSON" in refused("--from", "hf", "--to", "xlbtm", "--input", cfg, "--out", tmp_path / "a.pt")
    (cfg / "config.json").write_text(json.dumps([1, 2]))
    assert "not a JSON object" in refused("--from", "hf", "--to", "xlbtm", "--input", cfg, "--out", tmp_path / "a.pt")
    # --from metaseq given an HF dir; --from xlbtm given a dir without consolidated.pt
    assert "no checkpoint_last" in refused("--from", "metaseq", "--to", "hf", "--input", hf, "--out", tmp_path / "b")
    (tmp_path / "run").mkdir()
    assert "without consolidated.pt" in refused(
        "--from", "xlbtm", "--to", "hf", "--input", tmp_path / "run", "--out", tmp_path / "b"
    )
    # --to hf --out an existing regular file (was FileExistsError); --out below a file; --to xlbtm --out a dir
    (tmp_path / "file").write_text("keep me")
    assert "is a file" in refused("--from", "xlbtm", "--to", "hf", "--input", pt, "--out", tmp_path / "file")
    assert "is a file, not a directory" in refused(
        "--from", "xlbtm", "--to", "hf", "--input", pt, "--out", tmp_path / "file" / "hf"
    )
    assert "is a directory" in refused("--from", "hf", "--to", "xlbtm", "--input", hf, "--out", cfg)
    assert (tmp_path / "file").read_text() == "keep me" and not (tmp_path / "a.pt").exists()


def test_tokenizer_and_clusterer_of_another_run_are_kept(tmp_path, capsys):
    """train_tokenizer --out / train_clusterer --output-dir replaced whatever tokenizer or clusterer dir was
    there (its experts name it); now only their own earlier output for the same inputs is replaced."""
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.scripts import train_clusterer, train_tokenizer

    for seed, name in enumerate(("d1", "d2")):
        write_demo_corpus(tmp_path / name, n_train=40, n_valid=4, seed=seed)

    def run(stage, mod, *argv) -> tuple[int, str]:
        capsys.readouterr()
        rc = main_wrapper(stage, mod.main, [str(a) for a in argv])
        return rc, capsys.readouterr().err

    tok = ("--vocab-size", "200", "--sample-docs", "40")
    assert (
        run("train_tokenizer", train_tokenizer, "--data-dir", tmp_path / "d1", "--out", tmp_path / "tok", *tok)[0] == 0
    )
    assert (
        run("train_tokenizer", train_tokenizer, "--data-dir", tmp_path / "d1", "--out", tmp_path / "tok", *tok)[0] == 0
    )
    before = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    rc, err = run("train_tokenizer", train_tokenizer, "--data-dir", tmp_path / "d2", "--out", tmp_path / "tok", *tok)
    assert rc == 2 and "train_tokenizer's output for other inputs (--data-dir was" in err
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == before

    clu = ("--num-clusters", "2", "--featurizer", "word", "--max-docs", "40")
    c = tmp_path / "clusterer"
    assert run("train_clusterer", train_clusterer, "--data-dir", tmp_path / "d1", "--output-dir", c, *clu)[0] == 0
    assert run("train_clusterer", train_clusterer, "--data-dir", tmp_path / "d1", "--output-dir", c, *clu)[0] == 0
    before = (c / "clusterer.json").read_bytes()
    rc, err = run("train_clusterer", train_clusterer, "--data-dir", tmp_path / "d2", "--output-dir", c, *clu)
    assert rc == 2 and "train_clusterer's output for other inputs" in err
    typo = ("--typological", "--langs", "en,fr", "--num-clusters", "2", "--output-dir", c)
    rc, err = run("train_clusterer", train_clusterer, *typo)
    assert rc == 2 and "--output-dir" in err and (c / "clusterer.json").read_bytes() == before
