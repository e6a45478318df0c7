"""Every command's flags are a contract (README, c-BTM's names): the set of flags each command accepts, and
where each lands, is frozen in tests/data/cli_flags.json, so a rename or a lost alias is a deliberate act
(torchtitan freezes its config the same way). After a deliberate change, regenerate the file:

    python tests/test_cli_flags.py --write

Also: every flag explains itself in --help, defaults are said once, and usage names the command as typed."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xlbtm.scripts.__main__ import commands, main

FROZEN = Path(__file__).parent / "data" / "cli_flags.json"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for name in commands():
        build = getattr(importlib.import_module(f"xlbtm.scripts.{name}"), "build_parser", None)
        if build is not None:  # lm_eval hands its flags to lm-evaluation-harness's own parser
            out[name] = build()
    return out


def flag_table() -> dict[str, dict[str, str]]:
    """command -> {flag: the setting it sets (argparse dest)}."""
    return {
        name: {s: a.dest for a in p._actions for s in a.option_strings if a.dest != "help"}
        for name, p in _parsers().items()
    }


def test_each_commands_flags_are_the_frozen_ones():
    frozen = json.loads(FROZEN.read_text())
    now = flag_table()
    assert set(now) == set(frozen), "a command was added or removed: regenerate tests/data/cli_flags.json"
    for name in frozen:
        lost = sorted(set(frozen[name]) - set(now[name]))
        new = sorted(set(now[name]) - set(frozen[name]))
        moved = sorted(f for f in set(frozen[name]) & set(now[name]) if frozen[name][f] != now[name][f])
        assert not (lost or new or moved), (
            f"{name}: flags lost {lost}, new {new}, now setting another field "
            f"{moved}; if deliberate, regenerate {FROZEN.name}"
        )


def test_the_contract_flags_of_cbtm_and_the_aliases_are_there():
    """c-BTM's names stay, and a user who learned one command can guess the next: a corpus is `--data-dir` and
    `--path-to-data` in every command that reads one; the directory a command writes is `--output-dir` too,
    beside its own c-BTM / metaseq name (`--serialization-dir`, `--output-prefix`, `--out`, eval's `--job-dir`)."""
    t = flag_table()
    corpus_readers = [n for n, flags in t.items() if {"--data-dir", "--path-to-data"} & set(flags)]
    assert len(corpus_readers) >= 10, corpus_readers
    for name in corpus_readers:
        assert {"--data-dir", "--path-to-data"} <= set(t[name]), name
        assert t[name]["--data-dir"] == t[name]["--path-to-data"], name
    for name, own in [
        ("train_experts", "--serialization-dir"),
        ("cluster", "--output-prefix"),
        ("eval_ensemble", "--job-dir"),
        ("quickstart", "--out"),
        ("scaling_study", "--out"),
        ("train_tokenizer", "--out"),
        ("make_demo_corpus", "--out"),
        ("binarize", "--output-dir"),
        ("train_clusterer", "--output-dir"),
        ("merge_experts", "--output-dir"),
    ]:
        assert t[name]["--output-dir"] == t[name][own], name
    assert {
        "--max-update",
        "--model-parallel",
        "--lr",
        "--num-clusters",
        "--path-to-clusters-dir",
        "--serialization-dir",
        "--seed-model",
    } <= set(t["train_experts"])
    assert {
        "--job-dir",
        "--path-to-clusterer",
        "--experts-dir",
        "--temperature",
        "--topk",
        "--ensemble-type",
        "--max-valid-steps",
    } <= set(t["eval_ensemble"])


@pytest.mark.parametrize("name", sorted(_parsers()))
def test_help_explains_every_flag_and_says_each_default_once(name):
    p = _parsers()[name]
    unexplained = [a.option_strings[0] for a in p._actions if a.option_strings and a.dest != "help" and not a.help]
    assert not unexplained, f"{name}: flags without help: {unexplained}"
    text = p.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    twice = re.findall(r"\(default[^()]*\) \(default[^()]*\)", " ".join(text.split()))
    assert not twice, twice  # once said "(default 1000) (default: 1000)"


def test_ensemble_type_help_explains_each_choice():
    text = " ".join(_parsers()["eval_ensemble"].format_help().split())
    for choice in ("clustering:", "uniform:", "lang:", "oracle:", "dense:", "average:"):
        assert choice in text


def test_usage_names_the_command_as_the_user_typed_it(capsys):
    with pytest.raises(SystemExit):
        main(["eval_ensemble", "--help"])
    assert capsys.readouterr().out.startswith("usage: xlbtm eval_ensemble ")
    out = subprocess.run(
        [sys.executable, "-m", "xlbtm.scripts.train_experts", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: python -m xlbtm.scripts.train_experts ")
    out = subprocess.run(
        [sys.executable, "-m", "xlbtm.scripts", "consolidate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: python -m xlbtm.scripts consolidate ")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    FROZEN.write_text(json.dumps(flag_table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FROZEN}")
