"""Small file helpers shared by every stage: atomic writes, json, fingerprints.

Everything xlbtm writes goes to a temporary name in the same directory and is renamed into place,
so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlbtm.errors import InputError, UsageError


def refuse_overlap(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Stop before anything is written when an output path is, contains, or lies inside an input path.

    `outputs` / `inputs` map the flag a user typed to its path (None: not given; a value that names no
    existing path, like a preset name, is skipped for inputs). Paths are compared resolved, symlinks followed,
    so `--output-prefix data/../data` or a link to the corpus is caught too. One wrong flag must not
    overwrite a corpus, a clusterer or a checkpoint with the stage's output.
    """
    resolved_inputs = [
        (flag, str(path), Path(path).resolve())
        for flag, path in inputs.items()
        if path is not None and str(path) and os.path.exists(path)
    ]
    for oflag, opath in outputs.items():
        if opath is None or not str(opath):
            continue
        out = Path(opath).resolve()
        for iflag, ipath, inp in resolved_inputs:
            if out == inp:
                what = "is"
            elif inp.is_relative_to(out):
                what = "contains"
            elif out.is_relative_to(inp):
                what = "lies inside"
            else:
                continue
            raise UsageError(
                f"{oflag} {opath} {what} {iflag} {ipath}: writing there would overwrite that input; "
                f"choose an output outside it"
            )


# ------------------------------------------------------------------------------------------- ownership
# One rule for every command that writes an artifact a user names (`convert --out`, `add_experts
# --output-clusterer`, `merge_experts --output-dir`, ...): an existing output is replaced only when it is
# this command's own earlier output for the same inputs. A record of who wrote it sits beside it (inside a
# directory, as a hidden sidecar next to a file); without one, the path belongs to somebody else.

OUTPUT_RECORD = ".xlbtm-output.json"


def output_record_path(path: str | os.PathLike, *, is_dir: bool) -> Path:
    path = Path(path)
    return path / OUTPUT_RECORD if is_dir else path.with_name(f".{path.name}{OUTPUT_RECORD}")


def output_owner(command: str, inputs: dict[str, Any]) -> dict:
    """Who writes an output: the command and the inputs it read (flag -> path, resolved; None: not given).

    Settings are not part of it on purpose: rerunning a command with another --dtype into its own output is
    the user iterating; pointing it at another run's output is the accident this rule exists for."""
    return {
        "command": command,
        "inputs": {flag: str(Path(p).resolve()) for flag, p in inputs.items() if p is not None and str(p)},
    }


def check_replaceable(
    path: str | os.PathLike,
    flag: str,
    owner: dict,
    *,
    is_dir: bool,
    legacy: Any = None,
) -> None:
    """Refuse (UsageError, before anything is computed) to write `path` over something this command with
    these inputs did not write. A missing path or an empty directory is free. `legacy(path) -> bool` accepts
    outputs written before records existed (e.g. merge_experts' `merged_from`)."""
    path = Path(path)
    # the nearest existing parent must be a directory, or the write fails later with a traceback
    parent = next((a for a in path.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is a file, not a directory; choose another path")
    if not path.exists() and not path.is_symlink():
        return
    if is_dir and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    if is_dir != path.is_dir():
        have, want = ("a file", "a directory") if is_dir else ("a directory", "a file")
        raise UsageError(f"{flag} {path} is {have}, and this command writes {want} there; choose another path")
    record = output_record_path(path, is_dir=is_dir)
    previous = None
    if record.is_file():
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    if isinstance(previous, dict) and previous.get("command") == owner["command"]:
        before, now = previous.get("inputs") or {}, owner["inputs"]
        if before == now:
            return
        differs = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
        key = differs[0]
        reason = (
            f"{owner['command']}'s output for other inputs ({key} was {before.get(key, 'not given')}, "
            f"now {now.get(key, 'not given')})"
        )
    elif legacy is not None and legacy(path):
        return
    elif isinstance(previous, dict):
        reason = f"the output of {previous.get('command')}"
    else:
        reason = "not an output of " + owner["command"]
    raise UsageError(
        f"{flag} {path} exists and is {reason}; an existing output is replaced only when it is this "
        "command's own earlier output for the same inputs: choose a new path (or remove it yourself)"
    )


def write_output_record(path: str | os.PathLike, owner: dict, *, is_dir: bool) -> None:
    """Record `owner` for `path`. For a directory written with `atomic_dir`, call it on the temporary
    directory; for a file, call it before the file is renamed into place (a record without its file claims
    nothing; a file without its record would refuse its own rerun)."""
    write_json(output_record_path(path, is_dir=is_dir), owner)


def _named_after(e: BaseException, tmp: Path, final: Path) -> BaseException:
    """An OSError about a temporary path, re-aimed at the final path the user asked for (it is what the
    error line should name: `no space left on device: out/hf/model.safetensors`, not `.hf.x1y2.tmp/...`)."""
    name = getattr(e, "filename", None)
    if isinstance(e, OSError) and name and str(name).startswith(str(tmp)):
        renamed = OSError(e.errno, e.strerror, str(final) + str(name)[len(str(tmp)) :])
        renamed.__cause__ = e
        return renamed
    return e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the final file the mode a plain open() would (shared clusters need it).
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # again: some writers (safetensors' save_file) replace the file and create it 0600
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise _named_after(e, tmp_path, path)  # noqa: B904  (e itself, or an OSError caused by it)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file for writing; it replaces `path` only when the block succeeds."""
    binary = "b" in mode
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block succeeds it becomes `path`.

    An existing `path` is swapped out first and deleted after, so readers see the old or the new
    directory, never a half-built one. On failure the temporary directory is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _named_after(e, tmp, path)  # noqa: B904  (e itself, or an OSError caused by it)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=False, ensure_ascii=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg} at column {e.colno})", path, e.lineno) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Fingerprint of a json-serializable object, independent of dict insertion order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
