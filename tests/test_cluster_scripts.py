import json

import pytest

from xlbtm.cli import main_wrapper
from xlbtm.scripts import cluster as cluster_script
from xlbtm.scripts import train_clusterer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xlbtm.demo_corpus import write_demo_corpus

    d = tmp_path_factory.mktemp("demo")
    write_demo_corpus(d, n_train=200, n_valid=20, seed=2)
    return d


def test_train_eval_and_cluster_cli(demo, tmp_path, capsys):
    c = tmp_path / "clusterer"
    rc = main_wrapper(
        "train_clusterer",
        train_clusterer.main,
        [
            "--data-dir",
            str(demo / "train"),
            "--num-clusters",
            "3",
            "--balanced",
            "--output-dir",
            str(c),
            "--featurizer",
            "word",
            "--max-docs",
            "150",
            "--seed",
            "1",
            "--eval",
        ],
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "cluster 2:" in out and "top terms:" in out and "NMI(cluster, lang)" in out
    ev = json.loads((c / "eval.json").read_text())
    assert sum(ev["sizes"]) == 150 and len(ev["top_terms"]) == 3 and len(ev["lang_mix"]) == 3
    fit = json.loads((c / "clusterer.json").read_text())["fit"]
    assert max(fit["sizes"]) - min(fit["sizes"]) <= 1  # balanced while fitting
    # --eval alone evaluates an existing clusterer
    assert (
        main_wrapper(
            "train_clusterer",
            train_clusterer.main,
            ["--eval", "--output-dir", str(c), "--data-dir", str(demo / "valid")],
        )
        == 0
    )
    assert json.loads((c / "eval.json").read_text())["num_docs"] == 20
    o = tmp_path / "clusters"
    rc = main_wrapper(
        "cluster",
        cluster_script.main,
        [
            "--data-dir",
            str(demo),
            "--path-to-clusterer",
            str(c),
            "--num-clusters",
            "3",
            "--output-prefix",
            str(o),
            "--split",
            "train",
            "--run",
            "local",
        ],
    )
    assert rc == 0
    m = json.loads((o / "manifest.json").read_text())
    assert sum(m["splits"]["train"]["documents"]) == 200
    assert len(list((o / "train").rglob("*.jsonl"))) == 2  # one per input file (2 shards)


def test_typological_cli(demo, tmp_path, capsys):
    rc = main_wrapper(
        "train_clusterer",
        train_clusterer.main,
        [
            "--typological",
            "--typology-mode",
            "balanced",
            "--langs",
            "en,de,ru,el,ar,zh",
            "--num-clusters",
            "3",
            "--output-dir",
            str(tmp_path / "t"),
            "--data-dir",
            str(demo / "train"),
        ],
    )
    assert rc == 0
    mapping = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(mapping) == {"en", "de", "ru", "el", "ar", "zh"} and set(mapping.values()) == {0, 1, 2}


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--num-clusters", "3", "--output-dir", "O"], "--data-dir is required"),
        (["--data-dir", "D", "--output-dir", "O"], "--num-clusters is required"),
        (["--data-dir", "{demo}", "--num-clusters", "2", "--output-dir", "{tmp}/o"], "--tokenizer"),
        (
            ["--data-dir", "{demo}", "--num-clusters", "500", "--output-dir", "{tmp}/o", "--featurizer", "word"],
            "fewer than --num-clusters",
        ),
        (
            [
                "--data-dir",
                "{demo}",
                "--num-clusters",
                "5",
                "--output-dir",
                "{tmp}/o",
                "--featurizer",
                "word",
                "--max-docs",
                "3",
            ],
            "--max-docs (3) must be >= --num-clusters (5)",
        ),
        (
            ["--data-dir", "{tmp}/nothing", "--num-clusters", "2", "--output-dir", "{tmp}/o", "--featurizer", "word"],
            "directory not found",
        ),
        (["--typological", "--num-clusters", "2", "--output-dir", "{tmp}/o"], "needs --langs"),
        (["--typological", "--langs", "en,xx", "--num-clusters", "2", "--output-dir", "{tmp}/o"], "'xx'"),
        (
            [
                "--typological",
                "--typology-mode",
                "xelm",
                "--langs",
                "en,de,fr",
                "--num-clusters",
                "2",
                "--output-dir",
                "{tmp}/o",
            ],
            "len(langs) / 2^m",
        ),
    ],
)
def test_train_clusterer_errors(demo, tmp_path, capsys, argv, msg):
    argv = [a.format(demo=demo / "train", tmp=tmp_path) for a in argv]
    assert main_wrapper("train_clusterer", train_clusterer.main, argv) == 2
    err = capsys.readouterr().err
    assert msg in err and sum(1 for line in err.splitlines() if "error:" in line) == 1


def test_cluster_cli_errors(tmp_path, capsys):
    assert (
        main_wrapper(
            "cluster",
            cluster_script.main,
            [
                "--data-dir",
                str(tmp_path / "data"),
                "--path-to-clusterer",
                str(tmp_path / "none"),
                "--output-prefix",
                str(tmp_path / "o"),
                "--split",
                "train",
                "--run",
                "local",
            ],
        )
        == 2
    )
    assert "not a clusterer directory" in capsys.readouterr().err


def test_tiny_corpus_n_equals_k(tmp_path):
    """c-BTM needs ~50k documents; any N >= K works here."""
    from xlbtm.cluster.artifact import load_clusterer

    p = tmp_path / "d" / "train" / "0" / "a.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in ["alpha beta gamma alpha", "delta epsilon zeta delta", "eta theta iota eta"]
        )
    )
    rc = main_wrapper(
        "train_clusterer",
        train_clusterer.main,
        [
            "--data-dir",
            str(tmp_path / "d"),
            "--num-clusters",
            "3",
            "--balanced",
            "--featurizer",
            "word",
            "--output-dir",
            str(tmp_path / "c"),
        ],
    )
    assert rc == 0
    c = load_clusterer(tmp_path / "c")
    assert c.meta["fit"]["sizes"] == [1, 1, 1] and c.lsa.dim == 2  # SVD rank <= N - 1
    assert c.predict(["alpha beta"]).shape == (1,)


def test_sampling_reads_lines_like_the_corpus_reader(tmp_path):
    """Files with a UTF-8 BOM, CRLF line ends, blank and whitespace-only lines and no final newline: the
    sampled documents (sp_ids, texts, langs) are exactly the ones `xlbtm.corpus.iter_file` yields there."""
    import gzip

    from xlbtm.cluster.train import _chosen_lines, sample_documents
    from xlbtm.corpus.reader import BOM, ReadStats, iter_file

    def body(tag: bytes) -> tuple[bytes, int]:
        lines = [
            b'{"text": "%s0 first", "lang": "en"}',
            b"",
            b'{"text": "%s2 zwei", "lang": "de"}',
            b"   \t",
            b'{"text": "%s4 no lang"}',
            b"",
            b'{"text": "%s6 \xc3\xbc", "lang": "fr"}',
            b'{"text": "%s7 last"}',
        ]
        lines = [x.replace(b"%s", tag) for x in lines]
        return BOM + b"\r\n".join(lines[:5]) + b"\n" + b"\n".join(lines[5:7]) + b"\r\n" + lines[7], len(lines)

    d = tmp_path / "train"
    (d / "0").mkdir(parents=True)
    (d / "1").mkdir()
    files = [d / "0" / "a.jsonl", d / "1" / "b.jsonl.gz"]
    data, n_lines = body(b"a")
    files[0].write_bytes(data)
    files[1].write_bytes(gzip.compress(body(b"b")[0]))

    def line(doc) -> int:
        return int(doc.sp_id.rsplit("|", 1)[1])

    for p in files:
        ref = list(iter_file(p, p.as_posix()))
        assert [line(doc) for doc in ref] == [0, 2, 4, 6, 7]
        for want in [set(range(n_lines)), {0, 1, 3, 7}, {1, 3, 5}, {6}]:
            got = list(_chosen_lines(p, want, False, ReadStats()))
            assert got == [doc for doc in ref if line(doc) in want], want  # same sp_ids, texts, langs

    ref = [(doc.text, doc.lang) for p in files for doc in iter_file(p, p.as_posix())]
    full = sample_documents(tmp_path, None)
    assert list(zip(full.texts, full.langs)) == ref
    for seed in range(4):  # fewer than all lines: the chosen-lines path
        s = sample_documents(tmp_path, 2 * n_lines - 3, seed=seed)
        assert s.total_docs == 2 * n_lines
        picked = list(zip(s.texts, s.langs))
        rest = iter(ref)
        assert all(x in rest for x in picked), picked  # an ordered subset of the reader's documents
        assert len(picked) >= len(ref) - 3
