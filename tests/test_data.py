"""Binarize (per-cluster token streams), CLM blocks, MLM masking, deterministic resumable sample order."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import make_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data, tok_dir, cdir = make_demo_data(root)
    from xlbtm.tokenizer import load_tokenizer

    return root, data, load_tokenizer(tok_dir), cdir


@pytest.fixture(scope="module")
def binarized(demo):
    from xlbtm.data.binarize import binarize

    root, data, tok, cdir = demo
    res = binarize(data, root / "bin", tok, clusters_dir=cdir, num_clusters=2, workers=0, batch_size=7)
    return res


def test_binarize_streams_hold_each_document_once_per_cluster(demo, binarized):
    from xlbtm.corpus import Corpus
    from xlbtm.data.binarize import bin_path, idx_path
    from xlbtm.data.dataset import TokenStream

    root, data, tok, cdir = demo
    man = binarized.manifest
    assert man["num_clusters"] == 2 and man["tokenizer_fingerprint"] == tok.fingerprint
    assert man["clusterer_fingerprint"] == "test-fp"
    for split in ("train", "valid"):
        docs = list(Corpus(data).iter_documents(split))
        by_cluster = {0: [], 1: []}
        for d in docs:
            by_cluster[int(d.sp_id.rsplit("|", 1)[1]) % 2].append(d)
        for k in (0, 1):
            s = TokenStream(bin_path(root / "bin", split, k), idx_path(root / "bin", split, k))
            assert s.num_docs == len(by_cluster[k]) == man["splits"][split]["documents"][k]
            assert len(s) == man["splits"][split]["tokens"][k]
            for i in (0, len(by_cluster[k]) // 2, len(by_cluster[k]) - 1):
                got = s.doc(i)
                assert got[0] == tok.eos_id  # </s> before every document
                assert got[1:].tolist() == tok.encode(by_cluster[k][i].text)
        langs = man["splits"][split]["lang"]
        assert sum(sum(v) for v in langs.values()) == sum(man["splits"][split]["tokens"])


def test_binarize_resumes_and_refuses_another_tokenizer(demo, binarized, tmp_path):
    from xlbtm.data.binarize import binarize
    from xlbtm.errors import InputError

    root, data, tok, cdir = demo
    again = binarize(data, root / "bin", tok, clusters_dir=cdir, workers=0)
    assert again.skipped_splits == ["train", "valid"]
    assert again.manifest["splits"] == binarized.manifest["splits"]

    class OtherTok:
        path, fingerprint, vocab_size, eos_id = tok.path, "different", tok.vocab_size, tok.eos_id

    with pytest.raises(InputError, match="tokenizer_fingerprint"):
        binarize(data, root / "bin", OtherTok(), clusters_dir=cdir, workers=0)


def test_binarize_parallel_workers_give_identical_bytes(demo, binarized, tmp_path):
    from xlbtm.data.binarize import bin_path, binarize

    root, data, tok, cdir = demo
    binarize(data, tmp_path / "par", tok, clusters_dir=cdir, splits=["valid"], workers=2, batch_size=5)
    for k in (0, 1):
        assert bin_path(tmp_path / "par", "valid", k).read_bytes() == bin_path(root / "bin", "valid", k).read_bytes()


def test_unassigned_documents_are_an_error_unless_allowed(demo, tmp_path):
    import shutil

    from xlbtm.data.binarize import binarize
    from xlbtm.errors import InputError
    from xlbtm.formats.clusters import cluster_files

    root, data, tok, cdir = demo
    c2 = tmp_path / "clusters"
    shutil.copytree(cdir, c2)
    f = cluster_files(c2, "valid")[0]
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[3:]) + "\n")  # drop 3 assignments
    with pytest.raises(InputError) as e:
        binarize(data, tmp_path / "b1", tok, clusters_dir=c2, splits=["valid"], workers=0)
    assert "3 documents" in str(e.value) and "valid/demo.jsonl|0" in str(e.value)
    assert not list((tmp_path / "b1" / "valid").glob("*.bin"))  # nothing half-written under final names
    res = binarize(data, tmp_path / "b2", tok, clusters_dir=c2, splits=["valid"], workers=0, allow_unassigned=True)
    assert res.manifest["splits"]["valid"]["unassigned"] == 3


def test_binarize_cli_reports_unassigned_with_exit_2(demo, tmp_path, capsys):
    import shutil

    from xlbtm.cli import main_wrapper
    from xlbtm.formats.clusters import cluster_files
    from xlbtm.scripts.binarize import main

    root, data, tok, cdir = demo
    c2 = tmp_path / "clusters"
    shutil.copytree(cdir, c2)
    f = cluster_files(c2, "valid")[0]
    f.write_text("\n".join(f.read_text().splitlines()[1:]) + "\n")
    argv = [
        "--path-to-data",
        str(data),
        "--path-to-clusters-dir",
        str(c2),
        "--tokenizer",
        str(tok.path),
        "--output-dir",
        str(tmp_path / "out"),
        "--splits",
        "valid",
        "--workers",
        "0",
    ]
    assert main_wrapper("binarize", main, argv) == 2
    assert "1 documents" in capsys.readouterr().err
    assert main_wrapper("binarize", main, argv + ["--allow-unassigned"]) == 0


def test_dense_baseline_puts_everything_in_cluster_0(demo, tmp_path):
    from xlbtm.data.binarize import binarize

    root, data, tok, cdir = demo
    res = binarize(data, tmp_path / "dense", tok, splits=["valid"], workers=0)
    assert res.manifest["num_clusters"] == 1 and res.manifest["clusterer_fingerprint"] is None
    assert res.manifest["splits"]["valid"]["documents"] == [24]


def test_clm_blocks_are_packed_and_shifted(demo, binarized):
    from xlbtm.data.binarize import bin_path
    from xlbtm.data.dataset import CLMDataset, TokenStream

    root, data, tok, cdir = demo
    s = TokenStream(bin_path(root / "bin", "train", 0))
    ds = CLMDataset(s, 16)
    assert len(ds) == (len(s) - 1) // 16
    x0, y0 = ds.get(0)
    x1, _ = ds.get(1)
    assert x0.shape == (16,) and np.array_equal(x0[1:], y0[:-1])
    assert y0[-1] == x1[0]  # blocks continue the stream: every token is predicted once
    flat = np.concatenate([ds.get(i)[0] for i in range(len(ds))])
    assert np.array_equal(flat, np.asarray(s.tokens[: len(flat)], dtype=np.int64))
    assert (flat == tok.eos_id).sum() >= 2  # documents packed across block boundaries


def test_mlm_masking_rates_and_determinism(demo, binarized):
    from xlbtm.data.binarize import bin_path
    from xlbtm.data.dataset import MLMDataset, TokenStream

    root, data, tok, cdir = demo
    ds = MLMDataset(
        TokenStream(bin_path(root / "bin", "train", 0)), 64, vocab_size=tok.vocab_size, mask_id=tok.mask_id, seed=3
    )
    n_cand = n_tgt = n_mask = n_same = 0
    for i in range(len(ds)):
        x, y = ds.get(i, global_index=i)
        body = np.asarray(ds.stream.tokens[i * 63 : (i + 1) * 63], dtype=np.int64)
        orig = np.concatenate([[tok.bos_id], body])
        assert x[0] == tok.bos_id and len(x) == 64
        tgt = y != -100
        assert np.array_equal(y[tgt], orig[tgt])
        assert np.array_equal(x[~tgt], orig[~tgt])  # only targets are corrupted
        n_cand += int((orig > 3).sum())
        n_tgt += int(tgt.sum())
        n_mask += int((x[tgt] == tok.mask_id).sum())
        n_same += int((x[tgt] == orig[tgt]).sum())
    assert 0.12 < n_tgt / n_cand < 0.18
    assert 0.74 < n_mask / n_tgt < 0.86
    assert 0.06 < n_same / n_tgt < 0.15
    a, b, c = ds.get(5, 100), ds.get(5, 100), ds.get(5, 101)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])  # the mask depends on the global sample index


def test_sampler_is_a_seeded_permutation_per_epoch_and_dp_split_is_exact():
    from xlbtm.data.dataset import Sampler, rank_indices

    s = Sampler(10, seed=7)
    e0 = [s.item(g) for g in range(10)]
    e1 = [s.item(g) for g in range(10, 20)]
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10)) and e0 != e1
    assert [Sampler(10, seed=7).item(g) for g in range(20)] == e0 + e1
    assert [Sampler(10, seed=8).item(g) for g in range(10)] != e0
    # one step of global batch 8 = dp 2 x bs 2 x update_freq 2 = dp 1 x bs 4 x update_freq 2
    dp2 = sorted(i for m in range(2) for r in range(2) for i in rank_indices(40, m, r, 2, 2))
    dp1 = sorted(i for m in range(2) for i in rank_indices(40, m, 0, 1, 4))
    assert dp2 == dp1 == list(range(40, 48))


# ------------------------------------------------------------------------------------------- stale inputs


def _copy_demo(demo, tmp_path):
    import shutil

    root, data, tok, cdir = demo
    shutil.copytree(data, tmp_path / "corpus")
    shutil.copytree(cdir, tmp_path / "clusters")
    return tmp_path / "corpus", tok, tmp_path / "clusters"


def test_documents_added_after_binarizing_are_binarized_on_rerun(demo, tmp_path, caplog):
    """done.json records every input file's identity: a file added (or rewritten) since binarizing
    redoes the split, so the new documents are trained on instead of silently ignored."""
    import json
    import logging

    from xlbtm.corpus import Corpus
    from xlbtm.data.binarize import binarize
    from xlbtm.formats.clusters import cluster_file_path, write_cluster_file

    data, tok, cdir = _copy_demo(demo, tmp_path)
    first = binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0)
    n0 = first.manifest["splits"]["train"]["documents"]
    assert binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0).skipped_splits == ["train", "valid"]

    new = data / "train" / "00009" / "extra.jsonl"
    new.parent.mkdir(parents=True)
    new.write_text("".join(json.dumps({"text": f"new document {i} " * 5, "lang": "en"}) + "\n" for i in range(7)))
    rel = Corpus(data).rel(new)
    write_cluster_file(cluster_file_path(cdir, rel), [(f"{rel}|{i}", 1) for i in range(7)])
    logging.getLogger("xlbtm.data").addHandler(caplog.handler)
    try:
        again = binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0)
    finally:
        logging.getLogger("xlbtm.data").removeHandler(caplog.handler)
    assert again.skipped_splits == ["valid"]  # valid's files did not change
    assert again.manifest["splits"]["train"]["documents"] == [n0[0], n0[1] + 7]
    assert "re-binarizing split 'train'" in caplog.text and "train/00009/extra.jsonl" in caplog.text

    # an old done.json (no recorded inputs) is redone once, then skipped
    done = tmp_path / "bin" / "valid" / "done.json"
    d = json.loads(done.read_text())
    del d["inputs"]
    done.write_text(json.dumps(d))
    assert binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0).skipped_splits == ["train"]
    assert binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0).skipped_splits == ["train", "valid"]


def test_train_experts_rebinarizes_a_split_whose_cluster_files_changed(demo, tmp_path):
    from xlbtm.data.binarize import binarize, split_inputs
    from xlbtm.train.experts import binarized_done

    data, tok, cdir = _copy_demo(demo, tmp_path)
    binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0)
    assert binarized_done(tmp_path / "bin", ["train", "valid"], tok.fingerprint, "test-fp", data, cdir)
    f = sorted((cdir / "valid").rglob("*.jsonl"))[0]
    f.write_text(f.read_text())  # re-clustered: same name, new mtime
    import os

    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not binarized_done(tmp_path / "bin", ["train", "valid"], tok.fingerprint, "test-fp", data, cdir)
    assert split_inputs(data, "valid", cdir)["clusters"][0][0] == f.relative_to(cdir).as_posix()


def test_cluster_files_of_another_clusterer_are_refused(demo, tmp_path):
    """Re-clustering `train` with a new clusterer drops `valid` from the manifest; its files on disk are the
    old clusterer's and must not be binarized as the new one's."""
    import json

    from xlbtm.data.binarize import binarize
    from xlbtm.errors import InputError
    from xlbtm.formats.clusters import iter_assignments, stats_path

    data, tok, cdir = _copy_demo(demo, tmp_path)
    m = json.loads((cdir / "manifest.json").read_text())
    m["splits"] = {"train": {}}  # valid was dropped: another clusterer wrote train
    (cdir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=r"split 'valid' is not in this manifest.*--split valid"):
        binarize(data, tmp_path / "bin", tok, clusters_dir=cdir, workers=0)
    assert not (tmp_path / "bin" / "valid" / "done.json").exists()

    # a single file whose sidecar names another clusterer
    m["splits"] = {"train": {}, "valid": {}}
    (cdir / "manifest.json").write_text(json.dumps(m))
    f = sorted((cdir / "train").rglob("*.jsonl"))[-1]
    stats_path(f).write_text(json.dumps({"fingerprint": "old-clusterer"}))
    with pytest.raises(InputError, match=rf"{f.name}: cluster file was made by clusterer old-clust"):
        list(iter_assignments(cdir, "train"))
    stats_path(f).write_text(json.dumps({"fingerprint": "test-fp"}))
    assert len(list(iter_assignments(cdir, "train"))) > 0


def test_a_failed_split_leaves_no_hidden_temp_files(demo, tmp_path):
    """A bad line half-way through a split (or any other failure while it is written) removes the split's
    temp streams: nothing half-written is left for a later run to clean up, monolingual or pairs."""
    import shutil

    from parallel_helpers import write_pairs

    from xlbtm.data.binarize import binarize, binarize_pairs
    from xlbtm.errors import InputError

    root, data, tok, cdir = demo
    bad = tmp_path / "corpus"
    shutil.copytree(data, bad)
    f = sorted((bad / "valid").rglob("*.jsonl"))[0]
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:5]) + "{broken\n" + "".join(lines[5:]))
    out = tmp_path / "bin"
    with pytest.raises(InputError, match="malformed JSON"):
        binarize(bad, out, tok, clusters_dir=cdir, splits=["valid"], workers=0, batch_size=2)
    assert [p.name for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")] == []
    assert not list((out / "valid").glob("*.bin"))  # nor anything under the final names

    pairs = write_pairs(tmp_path / "pairs", n=6)
    with open(pairs / "train" / "00000" / "de.jsonl", "a") as fh:
        fh.write("{broken\n")
    with pytest.raises(InputError, match="malformed JSON"):
        binarize_pairs(pairs, tmp_path / "pbin", tok, splits=["train"], batch_size=2)
    assert [p.name for p in (tmp_path / "pbin").rglob("*") if p.is_file()] == []


def test_a_corpus_file_rewritten_while_binarized_is_not_published(demo, tmp_path, monkeypatch):
    """done.json vouches for the inputs recorded before the split was read: a corpus file rewritten during
    binarization would publish streams of a mix of versions under it. Refused; nothing written."""
    import os
    import shutil

    from xlbtm.corpus import Corpus
    from xlbtm.data.binarize import binarize
    from xlbtm.errors import InputError

    root, data, tok, cdir = demo
    copy = tmp_path / "corpus"
    shutil.copytree(data, copy)
    f = sorted((copy / "valid").rglob("*.jsonl"))[0]
    real = Corpus.iter_documents

    def rewritten_meanwhile(self, split):
        for i, doc in enumerate(real(self, split)):
            if i == 3:
                st = f.stat()
                os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a writer touched it
            yield doc

    monkeypatch.setattr(Corpus, "iter_documents", rewritten_meanwhile)
    with pytest.raises(InputError, match="split 'valid' changed while they were binarized"):
        binarize(copy, tmp_path / "bin", tok, clusters_dir=cdir, splits=["valid"], workers=0)
    assert [p.name for p in (tmp_path / "bin").rglob("*") if p.is_file()] == []
    monkeypatch.setattr(Corpus, "iter_documents", real)
    assert binarize(copy, tmp_path / "bin", tok, clusters_dir=cdir, splits=["valid"], workers=0).manifest["splits"]
