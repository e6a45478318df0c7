"""A crafted DCP checkpoint must not run code: `.metadata` and non-tensor entries are read without it."""

from __future__ import annotations

import io
import pickle
import shutil

import pytest
import torch

from xlbtm.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class _Payload:
    """Unpickling this runs `open(marker, "w")`: proof that a loader executed code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _real_checkpoint(tmp_path):
    """A DCP checkpoint as training writes it (model + AdamW state, whose param_groups are byte entries)."""
    from xlbtm.models import build_model, get_preset
    from xlbtm.parallel.checkpoint import save_checkpoint
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(get_preset("debug", vocab_size=64, max_positions=16))
    opt = build_optimizer(model, TrainConfig(run_dir="-", data_dir="-", seed_model="debug"), "cpu")
    model(torch.randint(4, 64, (2, 8)), None).sum().backward()
    opt.step()
    ck = save_checkpoint(tmp_path / "run", 1, model, opt, {"step": 1, "position": 2, "seed": 1})
    return ck, model, opt


def test_real_checkpoints_still_load_through_the_safe_reader(tmp_path):
    from xlbtm.parallel.checkpoint import load_checkpoint, read_model_state

    ck, model, opt = _real_checkpoint(tmp_path)
    state = read_model_state(ck)
    for k, v in model.state_dict().items():
        if k in state:
            torch.testing.assert_close(state[k], v)
    assert load_checkpoint(ck, model, opt) == {"step": 1, "position": 2, "seed": 1}
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)  # a byte entry, read back as a plain value


def test_crafted_metadata_pickle_is_refused_and_never_runs(tmp_path):
    from xlbtm.parallel.checkpoint import load_checkpoint, read_model_state

    ck, model, opt = _real_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    (ck / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    for load in (lambda: read_model_state(ck), lambda: load_checkpoint(ck, model, opt)):
        with pytest.raises(InputError) as e:
            load()
        assert "io.open" in str(e.value) and ".metadata" in str(e.value)
    assert not marker.exists()


def test_payload_hidden_inside_real_metadata_is_refused(tmp_path):
    """The payload nested in an otherwise genuine Metadata object (as a storage_data value)."""
    from xlbtm.parallel.checkpoint import read_dcp_metadata, read_model_state

    ck, _, _ = _real_checkpoint(tmp_path)
    md = read_dcp_metadata(ck)
    key = next(iter(md.storage_data))
    md.storage_data[key] = _Payload(tmp_path / "pwned")
    (ck / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(InputError, match="io.open"):
        read_model_state(ck)
    assert not (tmp_path / "pwned").exists()


def test_crafted_byte_entry_is_refused_and_never_runs(tmp_path):
    """A non-tensor entry (optimizer param_groups) replaced by a pickled payload in its .distcp file."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from xlbtm.parallel.checkpoint import load_checkpoint, read_dcp_metadata

    ck, model, opt = _real_checkpoint(tmp_path)
    md = read_dcp_metadata(ck)
    fqn = next(k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    index = next(i for i in md.storage_data if i.fqn == fqn)
    info = md.storage_data[index]
    shard = ck / info.relative_path
    buf = io.BytesIO()
    torch.save(_Payload(tmp_path / "pwned"), buf)  # what DCP's writer stores for a byte entry: torch.save
    payload = buf.getvalue()
    data = shard.read_bytes()
    # splice the payload in place of the entry and point the metadata at it
    shard.write_bytes(data + payload)
    info.offset, info.length = len(data), len(payload)
    (ck / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(InputError) as e:
        load_checkpoint(ck, model, opt)
    assert fqn in str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_truncated_metadata_is_one_clear_error(tmp_path):
    from xlbtm.parallel.checkpoint import read_model_state

    ck, _, _ = _real_checkpoint(tmp_path)
    data = (ck / ".metadata").read_bytes()
    (ck / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable DCP metadata"):
        read_model_state(ck)
    shutil.rmtree(ck)


def test_a_save_that_fails_half_way_never_moves_latest(tmp_path, monkeypatch):
    """DCP dies after writing part of step 2 (disk full, a killed writer): `latest` still names the complete
    step 1, a resume loads it, and the next save of step 2 replaces the half-written files."""
    import torch.distributed.checkpoint.filesystem as fs

    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.parallel.checkpoint import load_newest_readable, save_checkpoint

    ck1, model, opt = _real_checkpoint(tmp_path)
    real_write = fs._write_item
    calls = []

    def write_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(fs, "_write_item", write_then_fail)
    with pytest.raises(OSError, match="No space left"):  # DCP's wrapper unwrapped: the CLI's one line
        save_checkpoint(tmp_path / "run", 2, model, opt, {"step": 2, "position": 4, "seed": 1})
    assert len(calls) > 3  # it did fail part-way, after writing some items
    assert latest_checkpoint(tmp_path / "run") == ck1
    assert not (tmp_path / "run" / "checkpoints" / "step_2").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob(".step_*"))  # nothing half-written left
    ck, st = load_newest_readable(tmp_path / "run", model, opt)
    assert ck == ck1 and st["step"] == 1
    monkeypatch.setattr(fs, "_write_item", real_write)
    ck2 = save_checkpoint(tmp_path / "run", 2, model, opt, {"step": 2, "position": 4, "seed": 1})
    assert latest_checkpoint(tmp_path / "run") == ck2
    assert not list((tmp_path / "run" / "checkpoints").glob(".step_*"))


def test_truncated_shard_of_the_newest_checkpoint_falls_back(tmp_path):
    """A truncated `.distcp` (not just `.metadata`) fails inside DCP, whose CheckpointException is a
    BaseException: the fallback must still see it and load the step before."""
    from xlbtm.formats.checkpoints import latest_checkpoint
    from xlbtm.parallel.checkpoint import load_newest_readable, save_checkpoint

    ck1, model, opt = _real_checkpoint(tmp_path)
    ck2 = save_checkpoint(tmp_path / "run", 2, model, opt, {"step": 2, "position": 4, "seed": 1})
    assert latest_checkpoint(tmp_path / "run") == ck2
    for shard in ck2.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:200])
    ck, st = load_newest_readable(tmp_path / "run", model, opt)
    assert ck == ck1 and st["step"] == 1


@pytest.mark.parametrize("where", ["consolidated.pt", "metaseq.pt", "pytorch_model.bin"])
def test_payload_in_any_torch_file_a_user_passes_never_runs(tmp_path, where):
    """--seed-model / --model-paths take .pt files and HF dirs from other people: each reaches its loader
    through the same entry point users type, and the payload is refused, not run."""
    from xlbtm.formats.hf import save_hf
    from xlbtm.formats.seed import load_seed
    from xlbtm.models import build_model, get_preset

    marker = tmp_path / "pwned"
    evil = {"model": {"w": torch.ones(2)}, "extra": _Payload(marker)}
    if where == "pytorch_model.bin":
        target = tmp_path / "hf"
        save_hf(build_model(get_preset("debug")), get_preset("debug"), target)
        (target / "model.safetensors").unlink()
        torch.save(evil, target / "pytorch_model.bin")
    else:
        target = tmp_path / where
        if where == "consolidated.pt":
            evil["xlbtm"] = {"format": "xlbtm-consolidated/1"}
        torch.save(evil, target)
    with pytest.raises(InputError) as e:
        load_seed(target)
    assert "io.open" in str(e.value) or "_Payload" in str(e.value)
    assert not marker.exists()


def test_payload_in_a_tensor_shard_never_runs(tmp_path):
    """The .distcp entry of a *tensor* replaced by a pickled payload (tensors are read with weights_only)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from xlbtm.parallel.checkpoint import read_dcp_metadata, read_model_state

    ck, _, _ = _real_checkpoint(tmp_path)
    md = read_dcp_metadata(ck)
    fqn = next(
        k for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata) and k.startswith("model.")
    )
    index = next(i for i in md.storage_data if i.fqn == fqn)
    info = md.storage_data[index]
    shard = ck / info.relative_path
    buf = io.BytesIO()
    torch.save(_Payload(tmp_path / "pwned"), buf)
    data = shard.read_bytes()
    shard.write_bytes(data + buf.getvalue())
    info.offset, info.length = len(data), len(buf.getvalue())
    (ck / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(InputError, match="unreadable DCP checkpoint"):  # torch's weights_only reader refused it
        read_model_state(ck)
    assert not (tmp_path / "pwned").exists()
