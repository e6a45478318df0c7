"""FSDP2 / TP / FSDP x TP on CPU with gloo give the single-process losses; DCP checkpoints reshard."""

from __future__ import annotations

import pytest
import torch
from train_helpers import base_cfg, final_weights, launch, make_demo_data, train_gnorms, train_losses

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    from xlbtm.data.binarize import binarize
    from xlbtm.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("par")
    data, tok_dir, cdir = make_demo_data(root)
    binarize(data, root / "bin", load_tokenizer(tok_dir), clusters_dir=cdir, workers=0)
    return root / "bin"


@pytest.fixture(scope="module")
def reference(data_bin, tmp_path_factory):
    """Single process, batch 4, 4 steps (clipping active: clip_norm 0.5)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    launch(1, base_cfg(run, data_bin))
    return run


def _assert_same_run(run, ref, atol=1e-4, steps=(1, 2, 3, 4)):
    # fp32 reduction order differs between layouts; Adam turns ~1e-7 gradient differences into ~1e-5 weight ones
    a, b = train_losses(run), train_losses(ref)
    assert sorted(a) == list(steps) and sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-4, (s, a[s], b[s])
    assert b[1] != b[4]  # it actually trained
    # the same gradient norm, so clipping (active: clip_norm 0.5) scaled the same gradients alike
    ga, gb = train_gnorms(run), train_gnorms(ref)
    for s in a:
        assert abs(ga[s] - gb[s]) < 1e-5 * gb[s], (s, ga[s], gb[s])
    wa, wb = final_weights(run), final_weights(ref)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)


def test_fsdp_dp2_matches_single_process(data_bin, reference, tmp_path):
    run = tmp_path / "dp2"
    launch(2, base_cfg(run, data_bin, batch_size=2))  # same global batch: 2 ranks x 2
    _assert_same_run(run, reference)


@pytest.mark.slow  # ~10 s idle, ~27 s on a loaded 2-core machine (TP on gloo is many small collectives)
def test_tp2_matches_single_process(data_bin, reference, tmp_path):
    run = tmp_path / "tp2"
    launch(2, base_cfg(run, data_bin, tensor_parallel_size=2))
    _assert_same_run(run, reference)


def test_update_freq_matches_bigger_batch(data_bin, reference, tmp_path):
    """dp 2 x batch 1 x update-freq 2 (gradient sync skipped on the first micro-batch) == batch 4."""
    run = tmp_path / "uf2"
    launch(2, base_cfg(run, data_bin, batch_size=1, update_freq=2))
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_fsdp_x_tp_4_processes_matches_single_process(data_bin, reference, tmp_path):
    run = tmp_path / "dp2tp2"
    launch(4, base_cfg(run, data_bin, batch_size=2, tensor_parallel_size=2))
    _assert_same_run(run, reference)


@pytest.mark.slow  # two launches
def test_checkpoint_from_dp2_resumes_at_dp1(data_bin, reference, tmp_path):
    import shutil

    from xlbtm.formats.checkpoints import latest_checkpoint, read_train_state

    run = tmp_path / "resharded"
    launch(2, base_cfg(run, data_bin, batch_size=2, save_interval_updates=2))
    # as if the dp=2 job died after saving step 2: drop step 4, point latest back
    shutil.rmtree(run / "checkpoints" / "step_4")
    (run / "checkpoints" / "latest").write_text("step_2\n")
    ck = latest_checkpoint(run)
    assert ck.name == "step_2" and read_train_state(ck) == {"step": 2, "position": 8, "seed": 1}
    (run / "train_log.jsonl").unlink()
    launch(1, base_cfg(run, data_bin, batch_size=4))  # resumes at another DP degree (same global batch)
    assert latest_checkpoint(run).name == "step_4"
    _assert_same_run(run, reference, steps=(3, 4))


@pytest.mark.slow  # two launches
def test_checkpoint_from_one_process_resumes_on_fsdp_dp2(data_bin, reference, tmp_path):
    """One CPU process trains without FSDP (nothing to shard); its plain-tensor DCP checkpoint must reshard
    into an FSDP dp=2 mesh and continue exactly like the uninterrupted single-process run."""
    import shutil

    from xlbtm.formats.checkpoints import latest_checkpoint

    run = tmp_path / "dp1_then_dp2"
    launch(1, base_cfg(run, data_bin, save_interval_updates=2))
    shutil.rmtree(run / "checkpoints" / "step_4")
    (run / "checkpoints" / "latest").write_text("step_2\n")
    (run / "train_log.jsonl").unlink()
    launch(2, base_cfg(run, data_bin, batch_size=2))
    assert latest_checkpoint(run).name == "step_4"
    _assert_same_run(run, reference, steps=(3, 4))


def test_checkpoint_layout_latest_pointer_and_keep_last_two(data_bin, tmp_path):
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.models import build_model, get_preset
    from xlbtm.parallel.checkpoint import read_model_state

    run = tmp_path / "keep"
    launch(1, base_cfg(run, data_bin, max_steps=5, save_interval_updates=1))
    steps = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert steps == ["step_4", "step_5"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_5"
    assert not list((run / "checkpoints").glob(".step_*"))  # no temp dirs left
    info = read_expert_info(run)
    assert info.cluster == 0 and info.num_clusters == 2 and info.clusterer_fingerprint == "test-fp"
    sd = read_model_state(latest_checkpoint(run))
    ref = build_model(get_preset("debug", vocab_size=info.model_args["vocab_size"])).state_dict()
    assert set(sd) == set(ref)  # plain FQNs, loadable into a plain model
    for k in sd:
        assert sd[k].shape == ref[k].shape


def test_clip_grad_norm_matches_torch_single_process():
    from xlbtm.train.optim import clip_grad_norm

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    n1 = clip_grad_norm(a, 0.5)
    n2 = torch.nn.utils.clip_grad_norm_(b, 0.5)
    assert abs(n1 - float(n2)) < 1e-5
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)


def test_mlm_dp2_matches_single_process(data_bin, tmp_path):
    """MLM target counts differ per sample: the loss is normalized by the step's global count, so DP is exact."""
    ref, run = tmp_path / "mlm1", tmp_path / "mlm2"
    launch(1, base_cfg(ref, data_bin, seed_model="debug-xlmr", objective="mlm"))
    launch(2, base_cfg(run, data_bin, seed_model="debug-xlmr", objective="mlm", batch_size=2))
    _assert_same_run(run, ref)


def test_activation_checkpointing_with_fsdp_dp2_matches(data_bin, reference, tmp_path):
    """AC recomputes each block in backward: FSDP must have re-gathered its (resharded) weights by then."""
    run = tmp_path / "ac"
    launch(2, base_cfg(run, data_bin, batch_size=2, activation_checkpointing=True))
    _assert_same_run(run, reference)


@pytest.mark.slow  # four launches
def test_activation_checkpointing_resumes_a_run_without_it_and_back(data_bin, reference, tmp_path):
    """AC wraps blocks (checkpoint_wrapper) but the checkpoint keys stay plain: a run saved with AC resumes
    without it, and one saved without AC resumes with it, each continuing the uninterrupted run exactly."""
    import shutil

    from xlbtm.formats.checkpoints import latest_checkpoint

    for first in (True, False):
        run = tmp_path / f"ac_{first}"
        launch(1, base_cfg(run, data_bin, save_interval_updates=2, activation_checkpointing=first))
        shutil.rmtree(run / "checkpoints" / "step_4")
        (run / "checkpoints" / "latest").write_text("step_2\n")
        (run / "train_log.jsonl").unlink()
        launch(1, base_cfg(run, data_bin, activation_checkpointing=not first))
        assert latest_checkpoint(run).name == "step_4"
        _assert_same_run(run, reference, steps=(3, 4))


@pytest.mark.slow
def test_compile_matches_eager(data_bin, reference, tmp_path):
    run = tmp_path / "compiled"
    launch(1, base_cfg(run, data_bin, compile=True))
    _assert_same_run(run, reference, atol=5e-4)


def test_mlm_tp2_matches_single_process(data_bin, tmp_path):
    """XLM-R under TP: the vocab-parallel embedding, its tied decoder and the sharded vocab bias."""
    ref, run = tmp_path / "mlm1", tmp_path / "mlmtp"
    launch(1, base_cfg(ref, data_bin, seed_model="debug-xlmr", objective="mlm"))
    launch(2, base_cfg(run, data_bin, seed_model="debug-xlmr", objective="mlm", tensor_parallel_size=2))
    _assert_same_run(run, ref)


VOCAB_PARALLEL = r"""
import json, torch, torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from xlbtm.models import build_model, get_preset
from xlbtm.parallel.loss_parallel import vocab_parallel_cross_entropy
from xlbtm.parallel.mesh import ParallelDims, build_mesh
from xlbtm.parallel.parallelize import build_loss_fn, parallelize
from xlbtm.models.loss import model_loss
import xlbtm.models.loss as loss_mod

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
out = {}
V, D, N = 1001, 24, 57  # an odd vocabulary: shards of 501 and 500 rows
loss_mod.CHUNK_BYTES = 4 * 501 * 10  # 10 tokens per chunk: 6 chunks, the last of 7
torch.manual_seed(0)  # the same tensors on both ranks
h = torch.randn(N, D, requires_grad=True)
w = torch.randn(V, D) * 0.3
b = torch.randn(V) * 0.1
t = torch.randint(0, V, (N,))
t[::5] = -100
wp, bp = w.clone().requires_grad_(), b.clone().requires_grad_()
plain = F.cross_entropy(F.linear(h, wp, bp), t, ignore_index=-100, reduction="sum")
plain.backward()
ref = (plain.item(), h.grad.clone(), wp.grad.clone(), bp.grad.clone())
h.grad = None
wd = torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)]))
bd = torch.nn.Parameter(distribute_tensor(b, mesh, [Shard(0)]))
loss = vocab_parallel_cross_entropy(h, wd, t, bd)
loss.backward()
out["loss"] = [loss.item(), ref[0]]
out["dh"] = (h.grad - ref[1]).abs().max().item()
out["dw"] = (wd.grad.full_tensor() - ref[2]).abs().max().item()
out["db"] = (bd.grad.full_tensor() - ref[3]).abs().max().item()
out["w_local"] = list(wd.to_local().shape)

# a parallelized model: the embedding (and XLM-R's vocab bias) hold half of the vocabulary rows
world_mesh = build_mesh(ParallelDims.from_world(2, 2), "cpu")
import copy
for preset in ("debug", "debug-xlmr"):
    torch.manual_seed(1)
    m = build_model(get_preset(preset, vocab_size=V))
    plain_model = copy.deepcopy(m)
    parallelize(m, world_mesh, device_type="cpu", fsdp=False)
    loss_fn = build_loss_fn(world_mesh)
    seen = {}
    for name in ("self_attn_layer_norm", "fc1"):  # sequence parallel: the residual stream holds T/2 tokens
        getattr(m.layers[0], name).register_forward_hook(
            lambda mod, inp, o, name=name: seen.setdefault(  # this rank's part of the module's input
                name, list(getattr(inp[0], "to_local", lambda: inp[0])().shape)) and None)  # (None: keep o)
    x = torch.randint(4, V, (2, 12))
    y = torch.roll(x, -1, dims=1)
    loss = model_loss(m, x, None, y, loss_fn=loss_fn)
    loss.backward()
    ref = model_loss(plain_model, x, None, y)
    ref.backward()
    g = m.layers[0].self_attn_layer_norm.weight.grad  # summed over both halves of the sequence
    out[preset] = {"embed": list(m.embed_tokens.weight.to_local().shape),
                   "bias": list(m.lm_head.bias.to_local().shape) if preset == "debug-xlmr" else None,
                   "loss_fn": loss_fn.__name__, "seen": seen, "loss": [loss.item(), ref.item()],
                   "norm_grad": (g.full_tensor() - plain_model.layers[0].self_attn_layer_norm.weight.grad).abs().max().item()}
if dist.get_rank() == 0:
    print("RESULT", json.dumps(out), flush=True)
dist.barrier()
import os
os._exit(0)  # not destroy_process_group(): with two meshes' subgroups, gloo's teardown sometimes aborts
"""


def test_vocab_parallel_loss_equals_plain_and_shards_the_embedding(tmp_path):
    """Loss and dh / dW / db of the vocabulary-parallel loss equal the plain full-vocabulary computation,
    with an odd vocabulary (uneven shards), ignored targets and several chunks; under TP=2 the embedding and
    XLM-R's vocab bias hold their half of the rows, the blocks' norms see half of the sequence (sequence
    parallel), and the loss and a sequence-parallel norm's gradient equal the unparallelized model's."""
    import json
    import os
    import subprocess
    import sys

    from train_helpers import REPO, free_port

    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", VOCAB_PARALLEL],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(
                os.environ,
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                RANK=str(r),
                WORLD_SIZE="2",
                LOCAL_RANK=str(r),
                OMP_NUM_THREADS="1",
            ),
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    res = json.loads([ln for ln in outs[0].splitlines() if ln.startswith("RESULT ")][0][7:])
    got, want = res["loss"]
    assert abs(got - want) < 1e-5 * abs(want), res
    assert res["dh"] < 1e-5 and res["dw"] < 1e-5 and res["db"] < 1e-5, res
    assert res["w_local"] == [501, 24]
    for preset, bias in (("debug", None), ("debug-xlmr", [501])):
        r = res[preset]
        assert (r["embed"], r["bias"], r["loss_fn"]) == ([501, 64], bias, "vocab_parallel_cross_entropy")
        # the norm sees its half of the 12 tokens; fc1 (after the all-gather) the whole sequence
        assert r["seen"] == {"self_attn_layer_norm": [2, 6, 64], "fc1": [2, 12, 64]}, r
        assert abs(r["loss"][0] - r["loss"][1]) < 1e-5 * abs(r["loss"][1]) and r["norm_grad"] < 1e-5, r


def test_dropout_masks_follow_samples_across_dp_degrees_and_resumes(data_bin, tmp_path):
    """Dropout 0.1 everywhere (embedding, residual, activation, attention): a sample's masks come from its
    global index, so dp=2 x batch 2 trains exactly what one process x batch 4 does, and a dp=2 run resumed
    on one process continues it exactly. (With masks from a per-rank RNG both would drift apart.)"""
    import shutil

    ref, dp2, resumed = tmp_path / "ref", tmp_path / "dp2", tmp_path / "resumed"
    launch(1, base_cfg(ref, data_bin, dropout=0.1))
    launch(2, base_cfg(dp2, data_bin, dropout=0.1, batch_size=2))
    _assert_same_run(dp2, ref)
    launch(2, base_cfg(resumed, data_bin, dropout=0.1, batch_size=2, save_interval_updates=2))
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    (resumed / "checkpoints" / "latest").write_text("step_2\n")
    (resumed / "train_log.jsonl").unlink()
    launch(1, base_cfg(resumed, data_bin, dropout=0.1, batch_size=4))
    _assert_same_run(resumed, ref, steps=(3, 4))
