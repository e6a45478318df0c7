"""Clustering parallel data (#18): `train_clusterer` / `cluster --parallel-side`, clustered binarized pairs, and
TLM experts that train on their own cluster's pairs (`train_experts --path-to-parallel-clusters-dir`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parallel_helpers import WORDS, write_mono, write_pairs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Pairs en->de / en->fr (train + valid), a monolingual en/de/fr corpus, a tokenizer, and a typological
    clusterer (de, fr, en; K=2) that has assigned both."""
    from xlbtm.cluster.assign import assign_corpus
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("pc")
    pairs = write_pairs(root / "pairs", n=40)
    write_pairs(root / "pairs", n=8, split="valid")
    mono = write_mono(root / "mono")
    tok = train_sentencepiece([" ".join(w) for w in WORDS.values()] * 20, root / "tok", vocab_size=80)
    clusterer = train_typological_clusterer(["de", "fr", "en"], 2, root / "clusterer")
    assert len(set(clusterer.lang_to_cluster[x] for x in ("de", "fr"))) == 2  # the test needs de and fr apart
    for split in ("train", "valid"):
        assign_corpus(pairs, root / "clusterer", root / "pair_clusters", split, workers=1, parallel_side="tgt")
        assign_corpus(mono, root / "clusterer", root / "mono_clusters", split, workers=1)
    return root, pairs, mono, tok, clusterer


def _pairs_by_cluster(pairs_dir: Path, split: str, assignments: dict) -> dict[int, list]:
    from xlbtm.corpus import Corpus

    out: dict[int, list] = {}
    for p in Corpus(pairs_dir).iter_pairs(split):
        out.setdefault(assignments[p.sp_id], []).append(p)
    return out


# -------------------------------------------------------------------------------------- reading a side


def test_a_pair_reads_as_the_document_of_one_side(tmp_path):
    from xlbtm.corpus import iter_file

    d = tmp_path / "p.jsonl"
    d.write_text('{"src": "house", "tgt": "Haus", "src_lang": "en", "tgt_lang": "de"}\n')
    got = {side: next(iter_file(d, "p.jsonl", parallel_side=side)) for side in ("src", "tgt", "both")}
    assert (got["src"].text, got["src"].lang) == ("house", "en")
    assert (got["tgt"].text, got["tgt"].lang) == ("Haus", "de")
    assert (got["both"].text, got["both"].lang) == ("house\nHaus", "de")
    assert {doc.sp_id for doc in got.values()} == {"p.jsonl|0"}


def test_a_missing_side_is_named_by_file_and_line(tmp_path, capsys):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.cluster import main

    d = tmp_path / "pairs" / "train" / "00000"
    d.mkdir(parents=True)
    (d / "de.jsonl").write_text('{"src": "a", "tgt": "b", "tgt_lang": "de"}\n{"src": "house", "tgt_lang": "de"}\n')
    from xlbtm.cluster.train import train_typological_clusterer

    train_typological_clusterer(["de", "fr"], 2, tmp_path / "c")
    argv = [
        "--data-dir",
        str(tmp_path / "pairs"),
        "--path-to-clusterer",
        str(tmp_path / "c"),
        "--output-prefix",
        str(tmp_path / "out"),
        "--split",
        "train",
        "--parallel-side",
        "tgt",
        "--num-workers",
        "1",
    ]
    assert main_wrapper("cluster", main, argv) == 2
    assert f"{d / 'de.jsonl'}:2: missing required field 'tgt'" in capsys.readouterr().err
    # without --parallel-side the pairs are read as documents, and the error says what is missing
    assert main_wrapper("cluster", main, argv[:-4] + ["--num-workers", "1"]) == 2
    assert f"{d / 'de.jsonl'}:1: missing required field 'text'" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.jsonl"))
    # a pair routed by its target language names that field (missing or not a string), at the file's real path
    (d / "de.jsonl").write_text('{"src": "a", "tgt": "b", "tgt_lang": "de"}\n{"src": "a", "tgt": "b", "tgt_lang": 5}\n')
    assert main_wrapper("cluster", main, argv) == 2
    err = capsys.readouterr().err
    assert f"{d / 'de.jsonl'}:2: " in err and "no string 'tgt_lang' field" in err, err


# ------------------------------------------------------------------------------------------ assignment


def test_cluster_parallel_side_routes_each_pair_by_its_target_language(data):
    from xlbtm.corpus import Corpus
    from xlbtm.formats.clusters import iter_assignments, read_manifest

    root, pairs, _, _, clusterer = data
    got = dict(iter_assignments(root / "pair_clusters", "train"))
    every = list(Corpus(pairs).iter_pairs("train"))
    assert len(got) == len(every) == 80
    assert all(got[p.sp_id] == clusterer.lang_to_cluster[p.tgt_lang] for p in every)
    man = read_manifest(root / "pair_clusters")
    assert man["parallel_side"] == "tgt" and sorted(man["splits"]) == ["train", "valid"]
    assert man["splits"]["train"]["lang"]["de"]["documents"][clusterer.lang_to_cluster["de"]] == 40
    assert "parallel_side" not in read_manifest(root / "mono_clusters")


def test_assignment_is_redone_when_the_side_changes(data):
    """A finished file counts as done only for the side it was read by (its sidecar records it)."""
    from xlbtm.cluster.assign import plan

    root, pairs, _, _, clusterer = data
    jobs, todo = plan(pairs, root / "pair_clusters", "train", clusterer.fingerprint, "tgt")
    assert len(jobs) == 2 and todo == []
    for side in ("src", "both", None):
        assert len(plan(pairs, root / "pair_clusters", "train", clusterer.fingerprint, side)[1]) == 2


def test_tfidf_clusterer_fits_and_routes_by_the_chosen_side(data, tmp_path):
    from xlbtm.cluster.assign import assign_corpus
    from xlbtm.cluster.train import sample_documents, train_tfidf_clusterer
    from xlbtm.corpus import Corpus
    from xlbtm.formats.clusters import iter_assignments

    _, pairs, _, _, _ = data
    sample = sample_documents(pairs / "train", None, parallel_side="tgt")
    every = list(Corpus(pairs).iter_pairs("train"))
    assert sample.texts == [p.tgt for p in every] and sample.langs == [p.tgt_lang for p in every]
    c, _ = train_tfidf_clusterer(pairs / "train", 2, tmp_path / "c", featurizer="word", parallel_side="tgt")
    assert c.meta["params"]["parallel_side"] == "tgt"
    assign_corpus(pairs, tmp_path / "c", tmp_path / "out", "train", workers=1, parallel_side="both")
    got = dict(iter_assignments(tmp_path / "out", "train"))
    want = c.predict([f"{p.src}\n{p.tgt}" for p in every])
    assert [got[p.sp_id] for p in every] == [int(k) for k in want]
    # the target words alone separate the languages: every de pair in one cluster, every fr pair in the other
    by_lang = {lang: {got[p.sp_id] for p in every if p.tgt_lang == lang} for lang in ("de", "fr")}
    assert all(len(v) == 1 for v in by_lang.values()) and by_lang["de"] != by_lang["fr"]


# --------------------------------------------------------------------------------------- binarization


def test_clustered_pairs_are_binarized_per_cluster(data, tmp_path):
    from xlbtm.data.binarize import binarize_pairs
    from xlbtm.data.dataset import PairStream
    from xlbtm.formats.clusters import iter_assignments
    from xlbtm.formats.pairs import read_pairs_manifest
    from xlbtm.tokenizer import load_tokenizer

    root, pairs, _, tok_dir, clusterer = data
    tok = load_tokenizer(tok_dir)
    out = tmp_path / "parallel"
    man = binarize_pairs(pairs, out, tok, splits=["train"], clusters_dir=root / "pair_clusters")
    assert read_pairs_manifest(out)["num_clusters"] == 2
    assert man["clusterer_fingerprint"] == clusterer.fingerprint
    want = _pairs_by_cluster(pairs, "train", dict(iter_assignments(root / "pair_clusters", "train")))
    assert man["splits"]["train"]["pairs"] == [len(want[0]), len(want[1])]
    for k in range(2):
        ps = PairStream(out, "train", k)
        assert len(ps) == len(want[k]) == 40
        for i in (0, len(ps) - 1):
            src, tgt = ps.pair(i)
            assert src.tolist() == tok.encode(want[k][i].src) and tgt.tolist() == tok.encode(want[k][i].tgt)
    assert not (out / "train" / "src.bin").exists()  # no unclustered stream beside the clusters' own


def test_unassigned_pairs_are_an_error_naming_the_count(data, tmp_path):
    import shutil

    from xlbtm.data.binarize import binarize_pairs
    from xlbtm.errors import InputError
    from xlbtm.tokenizer import load_tokenizer

    root, pairs, _, tok_dir, _ = data
    clusters = tmp_path / "clusters"
    shutil.copytree(root / "pair_clusters", clusters)
    (clusters / "train" / "00000" / "fr.jsonl").write_text("")  # the fr pairs lose their clusters
    with pytest.raises(InputError, match="40 pairs of split 'train' have no cluster"):
        binarize_pairs(pairs, tmp_path / "out", load_tokenizer(tok_dir), splits=["train"], clusters_dir=clusters)
    assert not list((tmp_path / "out" / "train").glob("*.bin"))  # nothing half-written
    m = binarize_pairs(
        pairs, tmp_path / "out", load_tokenizer(tok_dir), splits=["train"], clusters_dir=clusters, allow_unassigned=True
    )
    assert sum(m["splits"]["train"]["pairs"]) == 40


# -------------------------------------------------------------------------------------------- training


def _argv(data, ser, objective, *extra):
    root, pairs, mono, tok, _ = data
    argv = [
        "--run",
        "debug",
        "--seed-model",
        "debug-xlmr",
        "--tokenizer",
        str(tok),
        "--num-clusters",
        "2",
        "--serialization-dir",
        str(ser),
        "--objective",
        objective,
        "--parallel-data",
        str(pairs),
        "--path-to-parallel-clusters-dir",
        str(root / "pair_clusters"),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--tokens-per-sample",
        "32",
        "--learning-rate",
        "3e-3",
        "--save-interval-updates",
        "3",
        "--validate-interval-updates",
        "3",
        "--log-interval",
        "1",
        "--binarize-workers",
        "0",
        "--data-name",
        "t",
        *extra,
    ]
    if objective != "tlm":
        argv += ["--path-to-data", str(mono), "--path-to-clusters-dir", str(root / "mono_clusters")]
    return argv


def test_tlm_experts_train_on_their_own_clusters_pairs(data, tmp_path, capsys):
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.formats.pairs import pairs_dir_for, read_pairs_manifest
    from xlbtm.scripts.train_experts import main
    from xlbtm.train.plan import allocate_steps

    ser = tmp_path / "ser"
    assert main(_argv(data, ser, "tlm", "--step-allocation", "proportional")) == 0
    out = capsys.readouterr().out
    assert "each expert reads its cluster's pairs" in out
    bin_dir = ser / "2_clusters" / "data-bin"
    pman = read_pairs_manifest(pairs_dir_for(next(bin_dir.iterdir())))
    tokens = [
        pman["splits"]["train"]["tokens"]["src"][k] + pman["splits"]["train"]["tokens"]["tgt"][k] for k in range(2)
    ]
    steps = allocate_steps(6, tokens)
    assert pman["num_clusters"] == 2 and "valid" in pman["splits"]
    for k in range(2):
        info = read_expert_info(ser / "2_clusters" / f"t.cluster{k}")
        assert info.data["config"]["max_steps"] == steps[k]
        assert info.data["train_tokens"] == tokens[k]  # its own cluster's pairs, both sides, and no others


def test_mlm_tlm_experts_read_both_streams_of_their_cluster(data, tmp_path):
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.scripts.train_experts import main

    ser = tmp_path / "ser"
    assert main(_argv(data, ser, "mlm+tlm", "--tlm-ratio", "0.5")) == 0
    for k in range(2):
        info = read_expert_info(ser / "2_clusters" / f"t.cluster{k}")
        assert info.data["config"]["objective"] == "mlm+tlm" and info.data["config"]["cluster"] == k


@pytest.mark.parametrize(
    "case, msg",
    [
        ("mono_as_parallel", "holds cluster files of monolingual documents"),
        ("parallel_as_mono", "holds cluster files of translation pairs"),
        ("other_clusterer", "assign both with the same clusterer"),
        ("dense", "needs --objective tlm or mlm+tlm and --num-clusters > 1"),
        ("tlm_with_mono_clusters", "--objective tlm reads no monolingual cluster files"),
    ],
)
def test_parallel_cluster_flags_are_checked_before_anything_runs(data, tmp_path, capsys, case, msg):
    from xlbtm.cli import main_wrapper
    from xlbtm.cluster.assign import assign_corpus
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.scripts.train_experts import main

    root, pairs, _, _, _ = data
    objective = "tlm" if case == "tlm_with_mono_clusters" else "mlm+tlm"
    argv = _argv(data, tmp_path / "ser", objective, "--dry-run")

    def put(flag, value):
        i = argv.index(flag)
        argv[i + 1] = value

    if case == "mono_as_parallel":
        put("--path-to-parallel-clusters-dir", str(root / "mono_clusters"))
    elif case == "parallel_as_mono":
        put("--path-to-clusters-dir", str(root / "pair_clusters"))
    elif case == "other_clusterer":
        train_typological_clusterer(["de", "fr"], 2, tmp_path / "c2")
        assign_corpus(pairs, tmp_path / "c2", tmp_path / "pc2", "train", workers=1, parallel_side="tgt")
        put("--path-to-parallel-clusters-dir", str(tmp_path / "pc2"))
    elif case == "dense":
        put("--num-clusters", "1")
    else:
        argv += ["--path-to-clusters-dir", str(root / "mono_clusters")]
    assert main_wrapper("train_experts", main, argv) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "ser").exists()


# ------------------------------------------------------------------------------------------- growing


def test_add_experts_grows_mlm_tlm_experts_on_the_new_languages_pairs(data, tmp_path, capsys):
    """A grown expert of a TLM ensemble keeps its objective and trains on the pairs into its language."""
    from xlbtm.cli import main_wrapper
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.scripts.add_experts import main as add_main
    from xlbtm.scripts.train_experts import main as train_main

    root, pairs, mono, tok, _ = data
    ser = tmp_path / "ser"
    assert train_main(_argv(data, ser, "mlm+tlm")) == 0
    new = tmp_path / "new"  # es documents and en->es pairs, beside other languages' that must not be read
    write_mono(new / "mono", n=30, langs=("es", "de"))
    write_pairs(new / "pairs", n=20, langs=("es", "fr"))
    grow = [
        "--experts-dir",
        str(ser / "2_clusters"),
        "--path-to-clusterer",
        str(root / "clusterer"),
        "--langs",
        "es",
        "--path-to-data",
        str(new / "mono"),
        "--output-clusterer",
        str(tmp_path / "c+es"),
        "--init",
        "expert:0",
        "--run",
        "debug",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--tokens-per-sample",
        "32",
        "--binarize-workers",
        "0",
        "--save-interval-updates",
        "3",
    ]
    assert main_wrapper("add_experts", add_main, grow) == 2  # the ensemble trains on pairs: they are needed
    assert "give --parallel-data" in capsys.readouterr().err
    assert add_main(grow + ["--parallel-data", str(new / "pairs")]) == 0
    info = read_expert_info(ser / "2_clusters" / "t.cluster2")
    assert info.data["config"]["objective"] == "mlm+tlm" and info.init["method"] == "expert"
    from xlbtm.formats.pairs import read_pairs_manifest

    grown = ser / "2_clusters" / "grown"
    pman = read_pairs_manifest(next(grown.glob("*/data-bin/parallel")))
    assert pman["splits"]["train"]["pairs"][2] == 20 and sum(pman["splits"]["train"]["pairs"]) == 20  # es only
    from xlbtm.formats.binarized import read_binarized_manifest

    mman = read_binarized_manifest(next(grown.glob("*/data-bin")))
    assert mman["splits"]["train"]["documents"] == [0, 0, 15]  # the 15 es documents, not the de ones
    tokens = mman["splits"]["train"]["tokens"][2] + sum(pman["splits"]["train"]["tokens"][s][2] for s in ("src", "tgt"))
    assert info.data["train_tokens"] == tokens


@pytest.mark.slurm
def test_pairs_are_binarized_in_a_slurm_job(data, tmp_path, slurm_cluster, monkeypatch, capsys):
    """--run slurm tokenizes the pairs in a job of their own, as the corpus is (not on the submitting node)."""
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.scripts.train_experts import main

    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_cluster.partition)
    argv = _argv(data, tmp_path / "ser", "tlm")
    argv[argv.index("--run") + 1] = "slurm"
    assert main(argv + ["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "binarize pairs: job" in out and out.count("completed at step 3") == 2
    for k in range(2):
        assert read_expert_info(tmp_path / "ser" / "2_clusters" / f"t.cluster{k}").data["config"]["objective"] == "tlm"
    assert main(argv + ["--device", "cpu"]) == 0  # a rerun finds the pairs binarized: no second job
    assert "binarize pairs: job" not in capsys.readouterr().out
