"""Files as version 1 of every xlbtm format wrote them (tests/data/formats_v1, made once by its
make_fixtures.py and committed) still read through today's one reader of each format, with the values they were
written with; files from before a version field existed read as version 1; an unknown version is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xlbtm.errors import InputError

V1 = Path(__file__).resolve().parent / "data" / "formats_v1"


@pytest.fixture
def v1(tmp_path) -> Path:
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def _edit(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def test_clusterer_artifacts(v1):
    from xlbtm.cluster.artifact import load_clusterer

    c = load_clusterer(v1 / "clusterer")
    assert (c.kind, c.num_clusters, c.featurizer_kind, c.vocab) == (
        "tfidf",
        2,
        "word",
        ["[UNK]", "alpha", "beta", "gamma"],
    )
    assert c.idf.shape == (4,) and c.components.shape == (3, 4) and c.centroids.shape == (2, 3)
    assert c.predict(["alpha beta", "gamma gamma"]).shape == (2,)
    t = load_clusterer(v1 / "typological")
    assert t.lang_to_cluster == {"de": 0, "en": 0, "ja": 1} and t.features.shape == (3, 5)
    _edit(v1 / "typological" / "clusterer.json", format="xlbtm-clusterer/9")
    with pytest.raises(InputError, match="unknown clusterer format 'xlbtm-clusterer/9'"):
        load_clusterer(v1 / "typological")


def test_cluster_files_manifest_and_sidecars(v1):
    from xlbtm.formats.clusters import iter_assignments, read_manifest, read_sidecar, stats_path

    d = v1 / "clusters"
    assert read_manifest(d)["splits"]["train"]["documents"] == [1, 1]
    assert list(iter_assignments(d, "train")) == [("train/00000/a.jsonl|0", 1), ("train/00000/a.jsonl|2", 0)]
    f = d / "train/00000/a.jsonl"
    assert read_sidecar(f)["input"] == {"size": 120, "mtime_ns": 1}
    _edit(stats_path(f), format=None)  # a sidecar from before the version field
    assert read_sidecar(f)["fingerprint"] == "fp-clusterer"
    assert list(iter_assignments(d, "train"))[0] == ("train/00000/a.jsonl|0", 1)
    _edit(stats_path(f), format="xlbtm-cluster-sidecar/9")
    assert read_sidecar(f) is None  # assignment redoes the file
    with pytest.raises(InputError, match="unreadable cluster-file sidecar"):
        list(iter_assignments(d, "train"))
    _edit(d / "manifest.json", format="xlbtm-clusters/9")
    with pytest.raises(InputError, match="cluster manifest format 'xlbtm-clusters/9'"):
        read_manifest(d)


def test_binarized_dir(v1):
    from xlbtm.data.dataset import TokenStream
    from xlbtm.formats.binarized import bin_path, idx_path, read_binarized_manifest, split_status

    d = v1 / "binarized"
    m = read_binarized_manifest(d)
    assert (m["num_clusters"], m["tokenizer_fingerprint"]) == (2, "fp-tok")
    inputs = {"corpus": [["train/00000/a.jsonl", 120, 1]]}
    done, why = split_status(d, "train", "fp-tok", "fp-clusterer", inputs)
    assert why == "" and done["stats"] == {"tokens": [4, 5]}
    s = TokenStream(bin_path(d, "train", 1), idx_path(d, "train", 1))
    assert len(s) == 5 and np.asarray(s.tokens[:5]).tolist() == [2, 8, 9, 2, 10]
    _edit(d / "train" / "done.json", inputs=None)  # a done.json from before inputs were recorded
    assert split_status(d, "train", "fp-tok", "fp-clusterer", inputs)[1].startswith("binarized by an older xlbtm")


def test_run_dir_checkpoint_expert_json_and_consolidated(v1):
    from xlbtm.formats.checkpoints import latest_checkpoint, read_train_state
    from xlbtm.formats.consolidated import load_consolidated
    from xlbtm.formats.expert import read_expert_info
    from xlbtm.parallel.checkpoint import read_model_state

    run = v1 / "run"
    info = read_expert_info(run)
    assert (info.cluster, info.num_clusters, info.data, info.model_args["d_model"]) == (1, 2, {"train_tokens": 5}, 8)
    ck = latest_checkpoint(run)
    assert ck.name == "step_2" and read_train_state(ck) == {"step": 2, "position": 8, "seed": 1}
    dcp_sd = read_model_state(ck)
    sd, args, extra = load_consolidated(run / "consolidated.pt")
    assert (args.d_model, args.vocab_size, extra) == (8, 16, {"step": "step_2"})
    assert sd.keys() == dcp_sd.keys() and all(torch.equal(sd[k], dcp_sd[k]) for k in sd)
    _edit(ck / "train_state.json", format=None)  # from before the version field
    assert read_train_state(ck) == {"step": 2, "position": 8, "seed": 1}
    _edit(ck / "train_state.json", format="xlbtm-checkpoint/9")
    with pytest.raises(InputError, match="expected format xlbtm-checkpoint/1"):
        read_train_state(ck)
    _edit(run / "expert.json", data=None)  # the first release wrote no `data`
    assert read_expert_info(run).data == {}


def test_binarized_pairs(v1):
    from xlbtm.data.dataset import PairStream
    from xlbtm.formats.binarized import split_status
    from xlbtm.formats.pairs import read_pairs_manifest

    d = v1 / "pairs"
    m = read_pairs_manifest(d)
    assert m["tokenizer_fingerprint"] == "fp-tok" and m["splits"]["train"]["pairs"] == 2
    assert m["num_clusters"] is None and m["clusterer_fingerprint"] is None  # version 1 had no clusters
    done, why = split_status(d, "train", "fp-tok", None, {"corpus": [["train/00000/de.jsonl", 90, 1]]})
    assert why == "" and done["stats"]["tokens"] == {"src": 3, "tgt": 4}
    ps = PairStream(d, "train")
    assert len(ps) == 2 and [a.tolist() for a in ps.pair(1)] == [[7], [9, 10, 11]]
    _edit(d / "manifest.json", format="xlbtm-pairs/3")
    with pytest.raises(InputError, match="not xlbtm binarized parallel data"):
        read_pairs_manifest(d)
