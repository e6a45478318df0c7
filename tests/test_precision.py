"""Training precision (`--precision`, xlbtm.runtime.resolve_precision): fp32, or bf16-mixed = FSDP2's
MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) on any device, here on CPU over gloo."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from train_helpers import REPO, base_cfg, final_weights, launch, make_demo_data, train_losses

from xlbtm.errors import UsageError
from xlbtm.runtime import resolve_precision
from xlbtm.train.metrics import read_train_log


def test_precision_default_follows_the_device():
    assert resolve_precision(None, "cuda") == "bf16-mixed" and resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed" and resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(UsageError, match="--precision must be one of fp32, bf16-mixed"):
        resolve_precision("bf16", "cpu")


def test_precision_flag_in_train_experts_help():
    out = subprocess.run(
        [sys.executable, "-m", "xlbtm.scripts.train_experts", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--precision {fp32,bf16-mixed}" in out and "fp32 master weights" in " ".join(out.split())


@pytest.mark.distributed
def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_master_weights():
    """One CPU process: bf16-mixed still applies FSDP (to cast), the blocks see bf16 weights and inputs, the
    loss is fp32, and the parameters the optimizer updates and their gradients stay fp32. fp32 casts nothing
    (and, on one process, skips FSDP as before)."""
    from torch.distributed.fsdp import FSDPModule

    from xlbtm.launch.distributed import destroy_distributed, init_distributed
    from xlbtm.models.loss import model_loss
    from xlbtm.models.presets import get_preset
    from xlbtm.parallel.mesh import ParallelDims, build_mesh
    from xlbtm.parallel.parallelize import parallelize
    from xlbtm.train.seeding import materialize

    init_distributed(device="cpu", init_single=True)
    try:
        mesh = build_mesh(ParallelDims.from_world(1, 1), "cpu")
        seen = {}
        for precision in ("fp32", "bf16-mixed"):
            torch.manual_seed(0)
            model = materialize(get_preset("debug"), torch.device("cpu"))
            parallelize(model, mesh, device_type="cpu", precision=precision)

            def hook(m, inp, p=precision):
                seen[p] = (m.weight.dtype, inp[0].dtype)

            model.layers[0].fc1.register_forward_pre_hook(hook)
            x = torch.randint(0, 300, (2, 16))
            loss = model_loss(model, x, None, x)
            loss.backward()
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
            assert isinstance(model, FSDPModule) == (precision == "bf16-mixed")
            assert {p.dtype for p in model.parameters()} == {torch.float32}
            assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
        assert seen == {"fp32": (torch.float32, torch.float32), "bf16-mixed": (torch.bfloat16, torch.bfloat16)}
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    from xlbtm.data.binarize import binarize
    from xlbtm.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("prec")
    data, tok_dir, cdir = make_demo_data(root)
    binarize(data, root / "bin", load_tokenizer(tok_dir), clusters_dir=cdir, workers=0)
    return root / "bin"


@pytest.mark.slow  # 3 launches, ~45 s on a loaded 2-core machine
@pytest.mark.distributed
def test_bf16_mixed_dp2_tracks_fp32_and_resumes_in_the_other_precision(data_bin, tmp_path):
    """The debug model (xglm, d 64, 2 layers), 20 steps on 2 gloo processes (FSDP dp 2, batch 2 x 2 of 32
    tokens, lr 3e-3), in fp32 and in bf16-mixed, same seed and samples.

    (a) bf16-mixed differs from fp32: some step's loss by more than 1e-5 relative. fp32 runs repeat bit for
        bit, and fp32 layouts differ by ~1e-7 (tests/test_parallel.py), so a larger gap is the bf16 casts.
    (b) every step's loss within 1% relative of fp32's. bf16 keeps 8 significant bits: unit roundoff
        2^-9 ~ 0.2% per weight and activation; a step's loss is a mean over 128 tokens of sums over d 64, so
        the roundings mostly average out, and Adam's fp32 master weights keep them from accumulating over
        steps. 1% = 5 unit roundoffs leaves room for that drift. Seen here: at most 0.042% (step 3: 10.4223
        fp32 vs 10.4266 bf16-mixed), ~0.01% typical; losses 10.96 -> 7.72 bits in both.
    (c) it trains: the last 5 steps' mean loss is at least 1.5 bits below step 1's (seen: 2.7 bits lower).

    The bf16-mixed checkpoint holds fp32 master weights; the fp32 run's checkpoint resumes in bf16-mixed
    (one process, FSDP only to cast) within the same 1% of its resume in fp32."""
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        runs[precision] = tmp_path / precision
        launch(2, base_cfg(runs[precision], data_bin, batch_size=2, max_steps=20, precision=precision))
    fp32, bf16 = train_losses(runs["fp32"]), train_losses(runs["bf16-mixed"])
    assert sorted(fp32) == sorted(bf16) == list(range(1, 21))
    rel = {s: abs(bf16[s] - fp32[s]) / fp32[s] for s in fp32}
    print("step fp32 bf16-mixed rel:", *(f"{s} {fp32[s]:.5f} {bf16[s]:.5f} {rel[s]:.1e}" for s in fp32), sep="\n")
    assert max(rel.values()) > 1e-5, rel  # (a)
    assert max(rel.values()) < 1e-2, rel  # (b)
    for losses in (fp32, bf16):  # (c)
        assert sum(losses[s] for s in range(16, 21)) / 5 < losses[1] - 1.5, losses
    assert {v.dtype for v in final_weights(runs["bf16-mixed"]).values()} == {torch.float32}

    # the fp32 run's checkpoint (step 20) resumed for 2 more steps on one process (the same global batch), in
    # bf16-mixed and, from a copy, in fp32: the precision of a run may change at a resume
    shutil.copytree(runs["fp32"], tmp_path / "resume-fp32")
    for run, precision in ((runs["fp32"], "bf16-mixed"), (tmp_path / "resume-fp32", "fp32")):
        launch(1, base_cfg(run, data_bin, batch_size=4, max_steps=22, precision=precision))
        log = read_train_log(run)
        assert [r["precision"] for r in log if r["kind"] == "resume"] == [precision]
    more, ref = train_losses(runs["fp32"]), train_losses(tmp_path / "resume-fp32")
    assert sorted(more) == sorted(ref) == list(range(1, 23)) and all(more[s] == ref[s] == fp32[s] for s in fp32)
    print("resumed fp32 bf16-mixed:", *(f"{s} {ref[s]:.5f} {more[s]:.5f}" for s in (21, 22)))
    for s in (21, 22):
        assert 1e-5 < abs(more[s] - ref[s]) / ref[s] < 1e-2, (s, more[s], ref[s])
