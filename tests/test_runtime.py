"""The runtime policy (xlbtm.runtime): device resolution (flag > $XLBTM_DEVICE > cuda when visible > cpu),
one dtype vocabulary for every --dtype. Training's --precision: tests/test_precision.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from train_helpers import REPO

from xlbtm.errors import UsageError
from xlbtm.runtime import DEVICE_ENV, dtype_name, resolve_device, resolve_dtype


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    return monkeypatch


@pytest.fixture
def gpus(no_env):
    """Pretend this machine has `n` GPUs."""

    def set_(n: int):
        no_env.setattr(torch.cuda, "is_available", lambda: n > 0)
        no_env.setattr(torch.cuda, "device_count", lambda: n)
        return no_env

    return set_


def test_device_default_follows_the_gpu(gpus):
    gpus(0)
    assert resolve_device() == resolve_device(None) == resolve_device("auto") == resolve_device("") == "cpu"
    gpus(2)
    assert resolve_device() == "cuda"


def test_env_var_is_honoured_and_an_explicit_request_wins(gpus):
    mp = gpus(2)
    mp.setenv(DEVICE_ENV, "cpu")
    assert resolve_device() == "cpu" and resolve_device("auto") == "cpu"
    assert resolve_device("cuda") == "cuda" and resolve_device("CUDA:1") == "cuda:1"
    mp.setenv(DEVICE_ENV, "cuda:1")
    assert resolve_device() == "cuda:1" and resolve_device("cpu") == "cpu"
    mp.setenv(DEVICE_ENV, "auto")  # no request: the GPU decides
    assert resolve_device() == "cuda"


def test_device_errors_name_the_problem(gpus):
    mp = gpus(0)
    with pytest.raises(UsageError, match="device cuda requested but no GPU is visible"):
        resolve_device("cuda")
    mp.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(UsageError, match=rf"requested \(by \${DEVICE_ENV}\) but no GPU"):
        resolve_device()
    assert resolve_device("cpu") == "cpu"  # the flag beats the env
    gpus(1)
    with pytest.raises(UsageError, match=r"cuda:1 requested but only 1 GPU"):
        resolve_device("cuda:1")
    with pytest.raises(UsageError, match="unknown device 'tpu'.*cpu, cuda, cuda:<n>"):
        resolve_device("tpu")
    mp.setenv(DEVICE_ENV, "gpu0")
    with pytest.raises(UsageError, match=rf"\${DEVICE_ENV}: unknown device 'gpu0'"):
        resolve_device()


def test_every_device_decision_goes_through_the_policy(gpus):
    """kmeans, training's plan (local runs) and the launch layer all follow $XLBTM_DEVICE."""
    from xlbtm.cluster.kmeans import default_device
    from xlbtm.launch.distributed import _pick_device
    from xlbtm.train.plan import detect_device

    mp = gpus(0)
    assert default_device() == torch.device("cpu") and detect_device("local") == "cpu"
    mp.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(UsageError, match="no GPU"):
        default_device()
    with pytest.raises(UsageError, match="no GPU"):
        detect_device("debug")
    with pytest.raises(UsageError, match="no GPU"):
        _pick_device(0, None)
    assert detect_device("local", "cpu") == "cpu" and _pick_device(0, "cpu") == torch.device("cpu")
    assert detect_device("slurm") == "cuda"  # SLURM: the env decides before sinfo; a login node has no GPU
    mp.setenv(DEVICE_ENV, "cpu")
    assert detect_device("slurm") == "cpu" and detect_device("slurm", "cuda") == "cuda"


def test_every_command_that_computes_takes_device_and_the_env(gpus, tmp_path, capsys):
    """`--device` (or $XLBTM_DEVICE) reaches every command that computes: a cuda request on a machine without a
    GPU is one line and exit 2 before anything is written, for the clusterer's k-means as for the rest."""
    from xlbtm.cli import main_wrapper
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.scripts import train_clusterer

    gpus(0)
    data = tmp_path / "data"
    write_demo_corpus(data, n_train=40, n_valid=4, seed=0)
    argv = ["--data-dir", str(data), "--num-clusters", "2", "--featurizer", "word", "--output-dir", str(tmp_path / "c")]
    assert main_wrapper("train_clusterer", train_clusterer.main, [*argv, "--device", "cuda"]) == 2
    assert "no GPU" in capsys.readouterr().err and not (tmp_path / "c").exists()
    gpus(0).setenv(DEVICE_ENV, "cuda")
    assert main_wrapper("train_clusterer", train_clusterer.main, argv) == 2
    assert "no GPU" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main_wrapper("train_clusterer", train_clusterer.main, [*argv, "--device", "cpu"]) == 0  # flag wins
    assert (tmp_path / "c" / "clusterer.json").is_file()


@pytest.mark.parametrize(
    "names,want",
    [
        (("fp32", "float32", "FP32", " Float32 "), torch.float32),
        (("bf16", "bfloat16", "BF16"), torch.bfloat16),
        (("fp16", "float16", "Float16"), torch.float16),
    ],
)
def test_one_dtype_vocabulary(names, want):
    for name in names:
        assert resolve_dtype(name) is want and dtype_name(name) == str(want).removeprefix("torch.")
    assert resolve_dtype(want) is want


def test_unknown_dtype_names_the_accepted_values():
    with pytest.raises(
        UsageError, match="unknown dtype 'int8'; expected one of fp32, float32, bf16, bfloat16, fp16, float16"
    ):
        resolve_dtype("int8")


def test_every_dtype_flag_takes_both_spellings(capsys):
    """consolidate / convert (fp16|bf16|fp32 before) and generate (float16|bfloat16|float32 before)."""
    from xlbtm.scripts import consolidate, convert, generate

    base = {
        "consolidate": ["run"],
        "convert": ["--from", "hf", "--to", "xlbtm", "--input", "a", "--out", "b"],
        "generate": ["--prompt", "x", "--model-paths", "m"],
    }
    for mod in (consolidate, convert, generate):
        p = mod.build_parser()
        args = base[mod.__name__.rsplit(".", 1)[1]]
        for given, want in (
            ("bf16", "bfloat16"),
            ("bfloat16", "bfloat16"),
            ("FP16", "float16"),
            ("float32", "float32"),
            ("fp32", "float32"),
        ):
            assert p.parse_args([*args, "--dtype", given]).dtype == want
        with pytest.raises(SystemExit) as e:
            p.parse_args([*args, "--dtype", "int8"])
        assert e.value.code == 2 and "unknown dtype 'int8'" in capsys.readouterr().err
    assert convert.build_parser().parse_args(base["convert"]).dtype == "keep"
    assert consolidate.build_parser().parse_args(["run"]).dtype is None
    assert generate.build_parser().parse_args(base["generate"]).dtype == "float32"


def test_runtime_does_not_import_torch():
    """The scripts' parsers and the torch-free cluster assignment path import xlbtm.runtime."""
    code = (
        "import sys, xlbtm.runtime as r; r.resolve_device('cpu'); r.dtype_name('bf16'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
