"""The README and docs/ as a newcomer reads them: nothing outside the clone, every path they name exists, every
`python -m xlbtm.scripts.<name>` they show is a command with those flags, and the cheap ones run as written."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from xlbtm.scripts.__main__ import commands

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m xlbtm\.scripts\.(\w+)")
README_LIMIT = 15_000  # characters: a README a newcomer reads on a few screens (issue #30)


def _commands(text: str) -> list[tuple[str, str]]:
    """(command name, the rest of its line) for every command shown: in indented blocks (continuation lines
    joined) and inline in backticks (which may wrap)."""
    found = []
    block = re.sub(r"\\\n\s*", " ", text)  # `\`-continued lines as one
    for line in block.splitlines():
        if line.startswith("    ") and (m := COMMAND.search(line)):
            found.append((m.group(1), line[m.end() :]))
    for span in re.findall(r"`([^`]+)`", text, flags=re.S):
        span = " ".join(span.split())
        for m in COMMAND.finditer(span):
            found.append((m.group(1), span[m.end() :].split(" python -m ")[0]))
    return found


def _flags(rest: str) -> set[str]:
    rest = rest.split("#")[0]  # a comment after the command
    return {m.group(0).split("=")[0] for m in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*(=\S*)?", rest)}


def test_the_readme_is_short_and_stays_inside_the_clone():
    text = (ROOT / "README.md").read_text()
    assert len(text) < README_LIMIT, f"README.md is {len(text)} characters; move detail to docs/"
    for page in PAGES:
        assert "../shared" not in page.read_text(), f"{page.name} sends a reader outside the clone"
    head = text[:2500]  # the first screen: what xlbtm is, the two commands
    assert "bash scripts/quickstart.sh" in head and "bash scripts/run_tests.sh" in head


def test_every_path_the_pages_name_exists():
    missing = []
    for page in PAGES:
        for p in re.findall(
            r"`((?:scripts|docs|benchmarks|slurm|tests|xlbtm|conversion|\.ci)/[\w./-]+)`", page.read_text()
        ):
            if not (ROOT / p.rstrip("/.")).exists():
                missing.append(f"{page.name}: {p}")
    for page in PAGES:
        for script in re.findall(r"bash (scripts/[\w.-]+\.sh)", page.read_text()):
            if not (ROOT / script).is_file():
                missing.append(f"{page.name}: {script}")
    assert not missing, missing


def test_every_command_shown_exists_with_the_flags_shown():
    known = set(commands())
    bad = []
    seen = 0
    for page in PAGES:
        for name, rest in _commands(page.read_text()):
            seen += 1
            if name not in known:
                bad.append(f"{page.name}: no command {name}")
                continue
            build = getattr(importlib.import_module(f"xlbtm.scripts.{name}"), "build_parser", None)
            if build is None:  # lm_eval: the flags are lm-evaluation-harness's own
                continue
            flags = {s for a in build()._actions for s in a.option_strings}
            bad += [f"{page.name}: {name} has no {f}" for f in sorted(_flags(rest) - flags)]
    assert seen > 30 and not bad, bad


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_cheap_commands_run_as_written(tmp_path):
    """The guide's data step (make a corpus, check it, train a tokenizer), exactly as printed, in a scratch dir."""
    guide = (ROOT / "docs" / "GUIDE.md").read_text()
    wanted = ("make_demo_corpus", "corpus_stats", "train_tokenizer")
    lines = {}
    for name, rest in _commands(guide):
        if name in wanted and name not in lines:
            lines[name] = rest.strip()
    assert set(lines) == set(wanted), lines
    for name in wanted:
        r = _run(["-m", f"xlbtm.scripts.{name}", *shlex.split(lines[name])], tmp_path)
        assert r.returncode == 0, (name, lines[name], r.stderr[-2000:])
    assert (tmp_path / "D" / "train").is_dir() and any((tmp_path / "TOK").iterdir())


@pytest.mark.parametrize("name", ["quickstart", "train_experts", "eval_ensemble", "build_corpus"])
def test_help_of_the_commands_the_readme_starts_with(name, tmp_path):
    r = _run(["-m", f"xlbtm.scripts.{name}", "--help"], tmp_path)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
