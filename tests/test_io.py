"""Atomic writes: a failure never leaves a half-written file or directory under the final name."""

import os
import stat

import pytest

from xlbtm.errors import InputError, UsageError
from xlbtm.io import (
    atomic_dir,
    atomic_open,
    check_replaceable,
    output_owner,
    read_json,
    write_json,
    write_output_record,
)


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


def test_an_output_is_replaced_only_by_its_own_command_for_the_same_inputs(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_text("a")
    b.write_text("b")
    mine = output_owner("convert", {"--input": a})
    out = tmp_path / "out.pt"
    check_replaceable(out, "--out", mine, is_dir=False)  # nothing there yet: free
    write_output_record(out, mine, is_dir=False)
    out.write_text("converted a")
    check_replaceable(out, "--out", mine, is_dir=False)  # its own earlier output: may be replaced
    with pytest.raises(UsageError, match=r"--out .*out.pt exists and is convert's output for other inputs"):
        check_replaceable(out, "--out", output_owner("convert", {"--input": b}), is_dir=False)
    with pytest.raises(UsageError, match="the output of convert"):
        check_replaceable(out, "--out", output_owner("merge", {"--input": a}), is_dir=False)
    # somebody else's file (no record) and a file where a directory goes are never replaced
    with pytest.raises(UsageError, match="not an output of convert"):
        check_replaceable(b, "--out", mine, is_dir=False)
    with pytest.raises(UsageError, match="is a file, and this command writes a directory"):
        check_replaceable(b, "--out", mine, is_dir=True)
    # directories: empty is free; a record inside names the owner; `legacy` accepts pre-record outputs
    d = tmp_path / "d"
    d.mkdir()
    check_replaceable(d, "--output-dir", mine, is_dir=True)
    (d / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="not an output of convert"):
        check_replaceable(d, "--output-dir", mine, is_dir=True)
    check_replaceable(d, "--output-dir", mine, is_dir=True, legacy=lambda p: (p / "notes.txt").exists())
    write_output_record(d, mine, is_dir=True)
    check_replaceable(d, "--output-dir", mine, is_dir=True)
