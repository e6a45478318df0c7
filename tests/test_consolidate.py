"""Consolidation: DCP expert checkpoint -> consolidated.pt / HF dir, and the many-experts shell script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ensemble import make_expert, tiny  # noqa: F401  (tiny is a fixture)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "consolidate_fsdp_shards.sh"

# DCP warns that it runs without a process group: single-process save/load is what these tests do
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _trained(tok, run_dir, seed=0):
    """An expert whose weights moved away from init (a few SGD steps), saved as a DCP checkpoint."""
    from xlbtm.models import build_model, get_preset

    args = get_preset("debug", vocab_size=tok.vocab_size, max_positions=64)
    torch.manual_seed(seed)
    model = build_model(args)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randint(4, tok.vocab_size, (2, 16))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    make_expert(run_dir, tok, 0, 2, seed=seed, state=model.state_dict())
    return model, args, x


def test_consolidate_reproduces_trained_logits(tiny, tmp_path):  # noqa: F811
    from xlbtm.formats.consolidated import load_consolidated
    from xlbtm.models import build_model
    from xlbtm.models.safe_load import safe_torch_load
    from xlbtm.scripts import consolidate as script

    run = tmp_path / "ser" / "2_clusters" / "r.cluster0"
    model, args, x = _trained(tiny["tok"], run)
    with torch.no_grad():
        ref = model(x)
    assert script.main([str(run)]) == 0
    raw = safe_torch_load(run / "consolidated.pt")
    assert any(k.startswith("decoder.layers.0.self_attn.q_proj") for k in raw["model"])  # metaseq, unfused
    assert "cfg" in raw and "last_optimizer_state" not in raw and not raw.get("optimizer_history")
    sd, args2, extra = load_consolidated(run / "consolidated.pt")
    assert extra["expert"]["cluster"] == 0 and extra["step"] == "step_10"
    plain = build_model(args2).eval()
    plain.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=0)
    # half precision on request
    assert script.main([str(run), "--dtype", "bf16"]) == 0
    sd16, _, _ = load_consolidated(run / "consolidated.pt")
    assert all(v.dtype == torch.bfloat16 for v in sd16.values() if v.is_floating_point())


def test_consolidate_hf_dir_loads_in_transformers(tiny, tmp_path):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    from xlbtm.ensemble.consolidate import consolidate

    run = tmp_path / "r.cluster0"
    model, args, x = _trained(tiny["tok"], run, seed=1)
    out = consolidate(run, hf=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out["hf"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-4, atol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(out["hf"])
    assert tok.convert_tokens_to_ids("</s>") == 2


def test_disk_full_during_hf_export_is_one_line_and_leaves_the_old_dir(tiny, tmp_path, monkeypatch, capsys):  # noqa: F811
    """ENOSPC while the weights are written: one line naming the path, exit 2; the previous hf/ is intact and no
    temporary file or directory is left behind."""
    import errno

    import safetensors.torch

    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import consolidate as script

    run = tmp_path / "r.cluster0"
    _trained(tiny["tok"], run, seed=2)
    assert script.main([str(run), "--hf"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "hf").iterdir()}
    listing = sorted(p.name for p in run.iterdir())

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main_wrapper("consolidate", script.main, [str(run), "--hf"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "no space left on device" in err[0], err
    assert err[0].rstrip().split(": ")[-1].startswith(str(run / "hf" / "model.safetensors")), err
    assert {p.name: p.read_bytes() for p in (run / "hf").iterdir()} == before
    assert sorted(p.name for p in run.iterdir()) == listing  # no .hf.*.tmp left


def test_consolidate_errors_are_clear(tiny, tmp_path):  # noqa: F811
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import consolidate as script

    run = tmp_path / "r.cluster0"
    make_expert(run, tiny["tok"], 0, 2, seed=0)
    (run / "checkpoints" / "latest").unlink()
    assert main_wrapper("consolidate", script.main, [str(run)]) == 2
    assert main_wrapper("consolidate", script.main, [str(tmp_path / "nope")]) == 2


def _run_script(ser, pattern, *extra, runner="auto"):
    env = {**os.environ, "PYTHON": sys.executable, "JOBS": "2", "RUNNER": runner}
    return subprocess.run(
        ["bash", str(SCRIPT), str(ser), pattern, *extra], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("runner", ["xargs", "parallel"])
def test_shell_script_spaces_skips_and_failures(tiny, tmp_path, runner):  # noqa: F811
    if runner == "parallel":
        probe = subprocess.run(["bash", "-c", "parallel --version"], capture_output=True, text=True)
        if "GNU parallel" not in probe.stdout:
            pytest.skip("GNU parallel not installed (the xargs path is tested)")
    ser = tmp_path / "my serialization dir" / "2_clusters"
    good = ser / "run one.cluster0"
    bad = ser / "run one.cluster1"
    other = ser / "other.dense"
    make_expert(good, tiny["tok"], 0, 2, seed=0)
    make_expert(bad, tiny["tok"], 1, 2, seed=1)
    make_expert(other, tiny["tok"], 0, 1, seed=2, fingerprint=None)
    (bad / "checkpoints" / "latest").write_text("step_99")  # points to a checkpoint that does not exist
    r = _run_script(ser.parent, "*cluster*", runner=runner)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "run one.cluster1" in r.stderr and "run one.cluster0" not in r.stderr
    assert (good / "consolidated.pt").is_file()
    assert not (bad / "consolidated.pt").exists()
    assert not (other / "consolidated.pt").exists()  # did not match the pattern
    assert "step_99" in (bad / "consolidate.log").read_text()
    # fix the broken one: the already consolidated expert is skipped, the other one is done
    (bad / "checkpoints" / "latest").write_text("step_10")
    mtime = (good / "consolidated.pt").stat().st_mtime_ns
    r = _run_script(ser.parent, "*cluster*", "--dtype", "fp16", runner=runner)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skip (already consolidated)" in r.stdout and "to consolidate: 1" in r.stdout
    assert (good / "consolidated.pt").stat().st_mtime_ns == mtime
    assert (bad / "consolidated.pt").is_file()
    # a pattern that matches nothing is an error, not a silent no-op
    assert _run_script(ser.parent, "*nothing*").returncode == 1


def test_consolidate_metaseq_sharded_dir(tmp_path):
    """c-BTM's sharded `checkpoint_last-model_part-*-shard*.pt` -> one consolidated.pt with the same logits."""
    from metaseq_writer import write_sharded_checkpoint

    from xlbtm.formats.consolidated import load_consolidated
    from xlbtm.models import ModelArgs, build_model
    from xlbtm.scripts import consolidate as script

    args = ModelArgs(
        arch="xglm",
        vocab_size=101,
        d_model=32,
        n_layers=2,
        n_heads=4,
        ffn_dim=70,
        max_positions=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    torch.manual_seed(0)
    m = build_model(args).eval()
    d = tmp_path / "cbtm run.cluster3"
    d.mkdir()
    write_sharded_checkpoint(d / "checkpoint_last", m.state_dict(), args, model_parts=2, shards=2)
    assert script.main([str(d)]) == 0
    sd, args2, _ = load_consolidated(d / "consolidated.pt")
    plain = build_model(args2).eval()
    plain.load_state_dict(sd)
    x = torch.randint(4, 101, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), m(x), rtol=1e-6, atol=1e-6)


def test_moved_consolidated_pt_keeps_its_expert_metadata(tiny, tmp_path):  # noqa: F811
    import shutil

    from xlbtm.ensemble.consolidate import consolidate
    from xlbtm.ensemble.experts import read_expert

    run = tmp_path / "r.cluster0"
    make_expert(run, tiny["tok"], 1, 2, seed=0)
    consolidate(run)
    (tmp_path / "moved").mkdir()
    shutil.copy(run / "consolidated.pt", tmp_path / "moved" / "expert_a.pt")
    e = read_expert(tmp_path / "moved" / "expert_a.pt")
    assert e.cluster == 1 and e.info["tokenizer_fingerprint"] == tiny["tok"].fingerprint
    assert e.source() == tmp_path / "moved" / "expert_a.pt"


def test_consolidate_metaseq_keeps_other_files_beside_the_shards(tmp_path, capsys):
    """Beside metaseq shards, consolidated.pt and hf/ are replaced only when consolidate wrote them from these
    shards (issue 27: one rule for every writer); another model's files there are refused and left as they are."""
    from metaseq_writer import write_sharded_checkpoint

    from xlbtm.cli import main_wrapper
    from xlbtm.formats.consolidated import load_consolidated, save_consolidated
    from xlbtm.formats.hf import save_hf
    from xlbtm.io import OUTPUT_RECORD
    from xlbtm.models import ModelArgs, build_model
    from xlbtm.scripts import consolidate as script

    args = ModelArgs(arch="xglm", vocab_size=40, d_model=16, n_layers=2, n_heads=2, ffn_dim=32, max_positions=16)
    torch.manual_seed(0)
    m = build_model(args)
    d = tmp_path / "ms"
    d.mkdir()
    write_sharded_checkpoint(d / "checkpoint_last", m.state_dict(), args, model_parts=1, shards=2)
    torch.manual_seed(1)
    other = build_model(args).state_dict()
    save_consolidated(d / "consolidated.pt", other, args)
    save_hf(other, args, d / "hf")
    before = (d / "consolidated.pt").read_bytes(), (d / "hf" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main_wrapper("consolidate", script.main, [str(d)]) == 2
    assert "not an output of consolidate" in capsys.readouterr().err
    (d / "consolidated.pt").unlink()
    assert main_wrapper("consolidate", script.main, [str(d), "--hf"]) == 2  # hf/ is another model's too
    assert (d / "hf" / "model.safetensors").read_bytes() == before[1] and not (d / "consolidated.pt").exists()

    assert main_wrapper("consolidate", script.main, [str(d)]) == 0
    assert torch.equal(
        load_consolidated(d / "consolidated.pt")[0]["layers.1.fc1.weight"], m.state_dict()["layers.1.fc1.weight"]
    )
    assert main_wrapper("consolidate", script.main, [str(d), "--dtype", "fp16"]) == 0  # its own output: replaced
    # written before output records existed: its header names these shards, so it is still consolidate's own
    (d / f".consolidated.pt{OUTPUT_RECORD}").unlink()
    assert main_wrapper("consolidate", script.main, [str(d)]) == 0
