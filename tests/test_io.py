"""Atomic writes: a failure never leaves a half-written file or directory under the final name."""

import os
import stat

import pytest

from xlbtm.errors import InputError
from xlbtm.io import atomic_dir, atomic_open, read_json, write_json


def test_atomic_open_keeps_old_content_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_written_files_get_the_umask_mode(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert read_json(tmp_path / "a.json") == {"x": 1}


def test_safetensors_artifacts_get_the_umask_mode_too(tmp_path):
    """safetensors' save_file creates its file 0600; clusterers and HF dirs live on shared clusters."""
    from xlbtm.formats.hf import save_hf
    from xlbtm.models import build_model, get_preset

    args = get_preset("debug", vocab_size=64)
    old = os.umask(0o022)
    try:
        save_hf(build_model(args), args, tmp_path / "hf")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "hf" / "model.safetensors").stat().st_mode) == 0o644


def test_read_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "a": 1,\n  oops\n}\n')
    with pytest.raises(InputError, match=r"bad\.json:3: malformed JSON"):
        read_json(p)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("crash")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(d) == ["old.txt"]

    with atomic_dir(d) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(d) == ["new.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask  # an ordinary directory, not mkdtemp's 0700
