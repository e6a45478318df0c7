"""One wrong flag must not destroy an input: every stage refuses an output that is, contains or lies inside
one of its inputs (resolved, symlinks followed), before it writes anything."""

from __future__ import annotations

import os

import pytest

from xlbtm.errors import UsageError


def _snapshot(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_refuse_overlap_relations(tmp_path):
    from xlbtm.io import refuse_overlap

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    os.symlink(data, tmp_path / "link")
    for out, what in [
        (data, "is"),
        (data / "train" / "x", "lies inside"),
        (tmp_path, "contains"),
        (tmp_path / "link" / "train", "lies inside"),
        (tmp_path / "link", "is"),
    ]:
        with pytest.raises(UsageError, match=f"--out .* {what} --data-dir"):
            refuse_overlap({"--out": out}, {"--data-dir": data})
    refuse_overlap({"--out": tmp_path / "elsewhere"}, {"--data-dir": data})  # siblings are fine
    refuse_overlap({"--out": tmp_path / "data2"}, {"--data-dir": data})  # a shared name prefix is not nesting
    refuse_overlap({"--out": data}, {"--seed-model": "debug", "--x": None})  # presets and unset flags: no path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.tokenizer import train_tokenizer_from_corpus

    root = tmp_path_factory.mktemp("ovl")
    write_demo_corpus(root / "data", n_train=60, n_valid=10, seed=0)
    train_tokenizer_from_corpus(root / "data", root / "tok", vocab_size=300, seed=0, style="xglm")
    return root


@pytest.mark.parametrize(
    "stage,argv",
    [
        (
            "cluster",
            [
                "--data-dir",
                "{data}",
                "--path-to-clusterer",
                "{root}/clu",
                "--output-prefix",
                "{data}",
                "--split",
                "train",
                "--run",
                "local",
            ],
        ),
        (
            "cluster",
            [
                "--data-dir",
                "{data}",
                "--path-to-clusterer",
                "{root}/clu",
                "--output-prefix",
                "{data}/train/c",
                "--split",
                "train",
                "--run",
                "local",
            ],
        ),
        ("train_tokenizer", ["--data-dir", "{data}", "--out", "{data}/train"]),
        (
            "train_clusterer",
            ["--data-dir", "{data}/train", "--num-clusters", "2", "--featurizer", "word", "--output-dir", "{data}"],
        ),
        ("binarize", ["--path-to-data", "{data}", "--tokenizer", "{root}/tok", "--output-dir", "{data}/valid"]),
        (
            "train_experts",
            [
                "--run",
                "debug",
                "--seed-model",
                "debug",
                "--tokenizer",
                "{root}/tok",
                "--num-clusters",
                "1",
                "--path-to-data",
                "{data}",
                "--serialization-dir",
                "{data}/..",
                "--max-steps",
                "1",
                "--binarized-dir",
                "{data}/bin",
            ],
        ),
        (
            "eval_ensemble",
            [
                "--data-dir",
                "{data}",
                "--model-paths",
                "{root}/nothing",
                "--ensemble-type",
                "dense",
                "--job-dir",
                "{data}/valid",
            ],
        ),
        ("quickstart", ["--data-dir", "{root}/qs/models/x", "--out", "{root}/qs"]),
    ],
)
def test_stages_refuse_to_write_into_their_inputs(corpus, stage, argv, capsys):
    import importlib

    from xlbtm.cli import main_wrapper

    if stage == "cluster" or stage == "train_clusterer":
        from xlbtm.cluster.train import train_tfidf_clusterer

        if not (corpus / "clu" / "clusterer.json").exists():
            train_tfidf_clusterer(corpus / "data" / "train", 2, corpus / "clu", featurizer="word")
    if stage == "quickstart":
        (corpus / "qs" / "models" / "x" / "train").mkdir(parents=True, exist_ok=True)
    before = _snapshot(corpus / "data")
    mod = importlib.import_module(f"xlbtm.scripts.{stage}")
    args = [a.format(data=corpus / "data", root=corpus) for a in argv]
    capsys.readouterr()  # the setup's own log lines (when an earlier test configured logging) are not the error
    assert main_wrapper(stage, mod.main, args) == 2
    err = capsys.readouterr().err
    assert "would overwrite that input" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(corpus / "data") == before  # nothing written, nothing touched
