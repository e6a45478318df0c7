"""add_experts (X-ELM's HMR): the extended clusterer keeps every old language's cluster, each new expert starts
from the init it names (checked bitwise with a zero learning rate), trains through the normal path into the
experts dir, records its init, and the grown ensemble evaluates; bad input is one error with nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xlbtm.cli import main_wrapper
from xlbtm.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

OLD_LANGS = ("en", "de", "ru", "el")
NEW_LANGS = ("ar", "zh")
TRAIN = [
    "--run",
    "debug",
    "--max-steps",
    "2",
    "--batch-size",
    "2",
    "--tokens-per-sample",
    "32",
    "--save-interval-updates",
    "2",
    "--validate-interval-updates",
    "0",
    "--log-interval",
    "1",
    "--binarize-workers",
    "0",
]


@pytest.fixture(scope="module")
def grown_base(tmp_path_factory):
    """Two typological experts trained on four languages; a corpus with two more."""
    from xlbtm.cluster.assign import assign_corpus
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.corpus import Corpus
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.scripts.train_experts import main as train_main
    from xlbtm.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("grow")
    old_data, new_data = root / "old", root / "new"
    write_demo_corpus(old_data, n_train=80, n_valid=16, langs=OLD_LANGS)
    write_demo_corpus(new_data, n_train=120, n_valid=24, langs=OLD_LANGS + NEW_LANGS, seed=1)
    tok = root / "tok"
    train_sentencepiece([d.text for d in Corpus(new_data).iter_documents("train")], tok, vocab_size=300)
    clusterer = root / "typo2"
    train_typological_clusterer(list(OLD_LANGS), 2, clusterer)
    for split in ("train", "valid"):
        assign_corpus(old_data, clusterer, root / "clusters", split)
    ser = root / "ser"
    assert (
        train_main(
            [
                "--seed-model",
                "debug",
                "--tokenizer",
                str(tok),
                "--path-to-clusters-dir",
                str(root / "clusters"),
                "--num-clusters",
                "2",
                "--path-to-data",
                str(old_data),
                "--serialization-dir",
                str(ser),
                "--run-name",
                "typo",
                "--learning-rate",
                "3e-3",
                *TRAIN,
            ]
        )
        == 0
    )
    return {"root": root, "new_data": new_data, "clusterer": clusterer, "experts": ser / "2_clusters", "tok": tok}


def _copy_experts(base, tmp_path):
    """A copy of the experts dir (each test grows its own)."""
    experts = tmp_path / "ser" / "2_clusters"
    shutil.copytree(base["experts"], experts, ignore=shutil.ignore_patterns("grown", "consolidated.pt"))
    return experts


def _argv(base, experts, out, init: str = "nearest", lr: str = "0", langs=NEW_LANGS, extra=()):
    return [
        "--experts-dir",
        str(experts),
        "--path-to-clusterer",
        str(base["clusterer"]),
        "--langs",
        ",".join(langs),
        "--path-to-data",
        str(base["new_data"]),
        "--init",
        init,
        "--output-clusterer",
        str(out),
        "--learning-rate",
        lr,
        *TRAIN,
        *extra,
    ]


def _grow(base, tmp_path, init: str, lr: str = "0", langs=NEW_LANGS):
    """add_experts on a copy of the experts dir."""
    from xlbtm.scripts.add_experts import main

    experts = _copy_experts(base, tmp_path)
    out = tmp_path / "typo2+new"
    argv = _argv(base, experts, out, init, lr, langs)
    return main_wrapper("add_experts", main, argv), experts, out, argv


def _snapshot(*roots) -> dict:
    """Every file, dir and link below `roots` (hidden ones too) with its bytes' hash: equal snapshots mean the
    filesystem there is byte-identical."""
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(d) / name
                kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
                out[str(p)] = (kind, hashlib.sha256(p.read_bytes()).hexdigest() if kind == "file" else None)
    return out


def _assert_own_flags(err: str) -> None:
    """Every flag a message of add_experts names is one of add_experts' own."""
    from xlbtm.scripts.add_experts import build_parser

    own = {s for a in build_parser()._actions for s in a.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", err))
    assert named <= own, (named - own, err)


def _weights(run_dir):
    from train_helpers import final_weights

    return final_weights(run_dir)


def test_nearest_init_extends_the_clusterer_and_trains_into_the_experts_dir(grown_base, tmp_path, capsys):
    from xlbtm.cluster.artifact import load_clusterer
    from xlbtm.cluster.typology import cosine_distances, language_features
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.scripts.add_experts import main

    rc, experts, out, argv = _grow(grown_base, tmp_path, "nearest")
    assert rc == 0
    old, ext = load_clusterer(grown_base["clusterer"]), load_clusterer(out)
    # every old language keeps its cluster; the new ones get clusters 2 and 3, in the order given
    assert ext.lang_to_cluster == {**old.lang_to_cluster, "ar": 2, "zh": 3}
    assert ext.num_clusters == 4 and ext.fingerprint != old.fingerprint
    assert ext.meta["lineage"] == {old.fingerprint: 2}
    docs = [{"text": "x", "lang": lang} for lang in OLD_LANGS]
    assert ext.predict(docs).tolist() == old.predict(docs).tolist()

    # the parent is the cluster with the nearest language (single linkage over URIEL cosine distances)
    feats, _ = language_features(list(OLD_LANGS) + list(NEW_LANGS))
    d = cosine_distances(feats)
    for i, _lang in enumerate(NEW_LANGS):
        per_cluster = [
            min(d[len(OLD_LANGS) + i, j] for j, x in enumerate(OLD_LANGS) if old.lang_to_cluster[x] == k)
            for k in range(2)
        ]
        info = read_expert_info(experts / f"typo.cluster{2 + i}")
        want = int(np.argmin(per_cluster))
        assert (info.cluster, info.num_clusters, info.clusterer_fingerprint) == (2 + i, 4, ext.fingerprint)
        assert info.init["method"] == "nearest" and info.init["parent_cluster"] == want
        assert info.init["distance"] == pytest.approx(per_cluster[want])
        assert info.init["parent"] == str(experts / f"typo.cluster{want}")
        assert info.init["root_seed_model"] == "debug"
        # with learning rate 0 the new expert is its parent, bitwise
        new, parent = _weights(experts / f"typo.cluster{2 + i}"), _weights(experts / f"typo.cluster{want}")
        assert new.keys() == parent.keys() and all(torch.equal(new[k], parent[k]) for k in new)

    # old and new experts evaluate as one ensemble under the extended clusterer
    res = run_eval(
        EvalConfig(
            data_dir=str(grown_base["new_data"]),
            data_subset="valid",
            job_dir=str(tmp_path / "ev"),
            ensemble_type="lang",
            path_to_clusterer=str(out),
            experts_dir=str(experts),
        )
    )
    assert res["settings"]["num_experts"] == 4 and set(res["per_cluster"]) == {"0", "1", "2", "3"}
    assert set(res["per_language"]) == set(OLD_LANGS + NEW_LANGS)

    # a rerun resumes (nothing new to train); another --init on the same dir is refused, not silently resumed
    latest = (experts / "typo.cluster2" / "checkpoints" / "latest").read_text()
    done = sorted(experts.glob("grown/*/data-bin/*/done.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    assert main_wrapper("add_experts", main, argv) == 0
    assert (experts / "typo.cluster2" / "checkpoints" / "latest").read_text() == latest
    assert done and [p.stat().st_mtime_ns for p in done] == stamps  # nothing binarized again
    # outputs written before ownership records (an older xlbtm) are still add_experts' own on a rerun
    records = list(tmp_path.rglob(".xlbtm-output.json"))
    assert len(records) == 4  # the clusterer, grown/<fp>, and each new run dir
    for record in records:
        record.unlink()
    assert main_wrapper("add_experts", main, argv) == 0
    assert (experts / "typo.cluster2" / "checkpoints" / "latest").read_text() == latest
    capsys.readouterr()
    # #27: the same outputs for other inputs are refused and kept: the clusterer for other languages, the
    # work dir (its cluster files, data) for another corpus
    data2 = tmp_path / "data2"
    shutil.copytree(grown_base["new_data"], data2)
    before = _snapshot(tmp_path)
    for flag, value, message in (
        ("--langs", "ar", "(--langs was ar,zh, now ar)"),
        ("--path-to-data", str(data2), f"(--path-to-data was {grown_base['new_data']}, now {data2})"),
    ):
        other = list(argv)
        other[other.index(flag) + 1] = value
        assert main_wrapper("add_experts", main, other) == 2
        err = capsys.readouterr().err
        assert "exists and is add_experts's output for other inputs " + message in err, err
        assert _snapshot(tmp_path) == before
    argv[argv.index("--init") + 1] = "seed"
    assert main_wrapper("add_experts", main, argv) == 2


@pytest.mark.parametrize("init", ["seed", "expert:1", "average"])
def test_seed_expert_and_average_inits(grown_base, tmp_path, init):
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.models import build_model, get_preset

    rc, experts, _, _ = _grow(grown_base, tmp_path, init, langs=("zh",))
    assert rc == 0
    info = read_expert_info(experts / "typo.cluster2")
    new = _weights(experts / "typo.cluster2")
    if init == "seed":
        assert info.init["method"] == "seed" and info.seed_model == "debug" and info.init["parent"] is None
        torch.manual_seed(1)  # the trainer's --seed (default 1): the experts' own random start
        ref = build_model(get_preset("debug", vocab_size=new["embed_tokens.weight"].shape[0])).state_dict()
        trained = _weights(experts / "typo.cluster0")
        assert any(not torch.equal(trained[k], ref[k]) for k in ref)  # (the experts moved away from it)
    elif init == "expert:1":
        assert info.init["method"] == "expert" and info.init["parent_cluster"] == 1
        ref = _weights(experts / "typo.cluster1")
    else:  # BTM: the experts' average weighted by their posterior on zh documents (recomputed here)
        from xlbtm.ensemble.experts import find_experts
        from xlbtm.ensemble.merge import average_states, posterior_weights

        old = sorted((e for e in find_experts(experts) if e.cluster < 2), key=lambda e: e.cluster)
        w = posterior_weights(old, grown_base["new_data"], "train", langs={"zh"}, max_docs=2000)
        assert info.init["method"] == "average" and info.init["weights"] == pytest.approx(w, abs=1e-9)
        assert abs(sum(w) - 1) < 1e-9 and info.init["parent"] == [str(e.run_dir) for e in old]
        ref = average_states(old, w)
    assert all(torch.equal(new[k], ref[k]) for k in ref)


def test_bad_input_is_one_error_and_writes_nothing(grown_base, tmp_path, capsys):
    from xlbtm.scripts.add_experts import main

    rc, experts, out, argv = _grow(grown_base, tmp_path / "seeds", "nearest", langs=("zh",))  # (grows zh)
    info = json.loads((experts / "typo.cluster1" / "expert.json").read_text())
    (experts / "typo.cluster1" / "expert.json").write_text(json.dumps({**info, "seed_model": "other-seed"}))
    shutil.rmtree(out)
    argv[argv.index("--langs") + 1] = "ar"
    assert main_wrapper("add_experts", main, argv) == 2 and "different seeds" in capsys.readouterr().err
    assert not out.exists() and not (experts / "typo.cluster3").exists()

    for langs, init, message in (
        (("en",), "nearest", "'en' is already covered by cluster"),
        (("zz",), "nearest", "'zz' has no URIEL"),
        (("zh", "zh"), "nearest", "lists a language twice"),
        (("zh",), "expert:7", "--init must be nearest, average, seed or expert:K"),
    ):
        rc, experts, out, _ = _grow(grown_base, tmp_path / f"bad{len(list(tmp_path.iterdir()))}", init, langs=langs)
        assert rc == 2 and message in capsys.readouterr().err
        assert not out.exists() and not (experts / "typo.cluster2").exists() and not (experts / "grown").exists()


def test_an_unrelated_output_clusterer_is_kept_byte_for_byte(grown_base, tmp_path, capsys):
    """#27: --output-clusterer naming another clusterer replaced it (and deleted its tokenizer), with
    --dry-run too. An existing output is replaced only when it is add_experts' own for the same inputs."""
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.scripts.add_experts import main

    experts = _copy_experts(grown_base, tmp_path)
    other = tmp_path / "other_clusterer"
    train_typological_clusterer(["en", "de", "ru"], 3, other)
    shutil.copytree(grown_base["tok"], other / "tokenizer")
    before = _snapshot(tmp_path, grown_base["root"])
    for extra in ((), ("--dry-run",)):
        assert main_wrapper("add_experts", main, _argv(grown_base, experts, other, extra=extra)) == 2
        err = capsys.readouterr().err
        assert f"--output-clusterer {other} exists and is not an output of add_experts" in err, err
        _assert_own_flags(err)
        assert _snapshot(tmp_path, grown_base["root"]) == before


@pytest.mark.parametrize("init", ["nearest", "average"])
def test_dry_run_writes_nothing_anywhere(grown_base, tmp_path, tmp_path_factory, capsys, monkeypatch, init):
    """#27: --dry-run extended the clusterer and assigned the corpus; now it computes them in a temporary dir
    (removed after), prints the plan, and the filesystem is byte-identical."""
    import tempfile

    from xlbtm.scripts.add_experts import main

    experts = _copy_experts(grown_base, tmp_path)
    out = tmp_path / "typo2+new"
    system_tmp = tmp_path_factory.mktemp("system_tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    before = _snapshot(tmp_path, grown_base["root"])
    assert main_wrapper("add_experts", main, _argv(grown_base, experts, out, init, extra=("--dry-run",))) == 0
    assert _snapshot(tmp_path, grown_base["root"]) == before
    assert list(system_tmp.iterdir()) == []
    printed = capsys.readouterr().out
    assert printed.count("plan: 1 expert(s) of K=4") == 2
    assert f"clusters: {experts / 'grown'}" in printed  # where the cluster files will be, not the temporary dir
    assert f"dry run: nothing written; would write the extended clusterer {out}" in printed


@pytest.mark.parametrize(
    "langs, extra, message",
    [
        (("pl",), (), "no training documents with lang pl"),
        (NEW_LANGS, ("--tokens-per-sample", "4096"), "--tokens-per-sample 4096 exceeds the model's max_positions"),
        (NEW_LANGS, ("--batch-size", "0"), "--batch-size must be >= 1"),
        (NEW_LANGS, ("--max-docs-per-lang", "0"), "--max-docs-per-lang must be >= 1"),
        (NEW_LANGS, ("--init", "average", "--objective", "mlm"), "--objective mlm trains a xlmr model"),
        (NEW_LANGS, "squat", "--experts-dir's cluster 2 {run_dir} exists and is not an output of add_experts"),
    ],
    ids=["no-documents", "tokens-per-sample", "batch-size", "max-docs", "objective", "run-dir-of-another-run"],
)
def test_refusals_come_before_the_first_write(grown_base, tmp_path, capsys, langs, extra, message):
    """#27: a language without documents or a too-long --tokens-per-sample wrote the clusterer and grown/
    before refusing. Every check (the documents, the train settings plan_experts checks, the output paths)
    now runs first: one error, the filesystem byte-identical, and the message names add_experts' own flags."""
    from xlbtm.scripts.add_experts import main

    experts = _copy_experts(grown_base, tmp_path)
    if extra == "squat":  # a run dir of another run (another clusterer's cluster 2) where the new one would go
        shutil.copytree(experts / "typo.cluster0", experts / "typo.cluster2")
        info = json.loads((experts / "typo.cluster2" / "expert.json").read_text())
        info.update(cluster=2, num_clusters=4, clusterer_fingerprint="f" * 64)
        (experts / "typo.cluster2" / "expert.json").write_text(json.dumps(info))
        extra = ()
    before = _snapshot(tmp_path, grown_base["root"])
    argv = _argv(grown_base, experts, tmp_path / "typo2+new", langs=langs, extra=extra)
    assert main_wrapper("add_experts", main, argv) == 2
    assert _snapshot(tmp_path, grown_base["root"]) == before
    err = capsys.readouterr().err
    assert message.format(run_dir=experts / "typo.cluster2") in err, err
    _assert_own_flags(err)


def test_messages_name_only_add_experts_flags(grown_base, tmp_path, capsys):
    """#27: add_experts named --output-dir and --model-paths, flags it does not have."""
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.scripts.add_experts import main

    experts = _copy_experts(grown_base, tmp_path)
    out = tmp_path / "typo2+new"
    other = tmp_path / "other_clusterer"
    train_typological_clusterer(["en", "de", "ru"], 3, other)
    not_a_clusterer = tmp_path / "notes"
    not_a_clusterer.mkdir()
    (not_a_clusterer / "todo.txt").write_text("keep me\n")
    argv = _argv(grown_base, experts, out)
    unrelated = argv[:]
    unrelated[unrelated.index("--path-to-clusterer") + 1] = str(other)
    for args, message in (
        (unrelated, "no expert here was trained on --path-to-clusterer"),
        (_argv(grown_base, experts, not_a_clusterer), f"--output-clusterer {not_a_clusterer} exists and is not"),
    ):
        assert main_wrapper("add_experts", main, args) == 2
        err = capsys.readouterr().err
        assert message in err, err
        _assert_own_flags(err)
    # a parent that never trained (its checkpoints gone): said in add_experts' terms, not eval's
    shutil.rmtree(experts / "typo.cluster0" / "checkpoints")
    assert main_wrapper("add_experts", main, _argv(grown_base, experts, out, "expert:0")) == 2
    err = capsys.readouterr().err
    assert "neither consolidated.pt nor a finished checkpoint (checkpoints/latest) to grow from" in err, err
    _assert_own_flags(err)
    (experts / "typo.cluster1" / "expert.json").unlink()
    assert main_wrapper("add_experts", main, argv) == 2
    err = capsys.readouterr().err
    assert "no expert for cluster(s) [1]" in err
    _assert_own_flags(err)
    assert not out.exists() and (not_a_clusterer / "todo.txt").read_text() == "keep me\n"


def test_experts_dir_above_its_k_clusters_dir_is_refused(grown_base, tmp_path, capsys):
    """#27: --experts-dir given the serialization dir (the parent of <K>_clusters) put the new experts outside
    their siblings' dir; now one line names the right path, and nothing is written."""
    from xlbtm.scripts.add_experts import main

    experts = _copy_experts(grown_base, tmp_path)
    before = _snapshot(tmp_path, grown_base["root"])
    assert main_wrapper("add_experts", main, _argv(grown_base, experts.parent, tmp_path / "typo2+new")) == 2
    err = capsys.readouterr().err
    assert f"give --experts-dir {experts.resolve()}" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(tmp_path, grown_base["root"]) == before


def test_tfidf_extension_adds_fitted_centroids_and_keeps_the_featurizer(tmp_path):
    from xlbtm.cluster.extend import extend_tfidf, lineage
    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.corpus import Corpus
    from xlbtm.demo_corpus import write_demo_corpus

    data = tmp_path / "data"
    write_demo_corpus(data, n_train=300, n_valid=8, langs=("en", "de", "ru", "zh"))
    docs = list(Corpus(data).iter_documents("train"))
    # (fitted on every language's text: a featurizer that never saw a language's terms cannot place it)
    old, _ = train_tfidf_clusterer(data, 2, tmp_path / "old", featurizer="word")
    by_lang = {lang: [d.text for d in docs if d.lang == lang] for lang in ("ru", "zh")}
    ext = extend_tfidf(old, by_lang, tmp_path / "ext")
    assert ext.num_clusters == 4 and lineage(ext) == {old.fingerprint: 2, ext.fingerprint: 4}
    assert np.array_equal(ext.idf, old.idf) and np.array_equal(ext.components, old.components)
    assert np.array_equal(ext.centroids[:2], old.centroids)
    for i, lang in enumerate(("ru", "zh")):
        np.testing.assert_allclose(ext.centroids[2 + i], old.transform(by_lang[lang]).mean(0), atol=1e-6)
        assert (ext.predict(by_lang[lang]) == 2 + i).mean() > 0.9, lang
    assert ext.meta["added_langs"] == {"ru": 2, "zh": 3}
    with pytest.raises(UsageError, match="'zh' is already covered by cluster 3"):
        extend_tfidf(ext, {"zh": by_lang["zh"]}, tmp_path / "ext2")
