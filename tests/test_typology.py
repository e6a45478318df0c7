import json

import numpy as np
import pytest

from xlbtm.cluster import typology
from xlbtm.errors import InputError, UsageError

NAN = np.nan


def test_uriel_features_from_wheel_without_pkg_resources():
    feats, codes = typology.language_features(["en", "fr", "zh", "nb", "deu"])
    assert codes == {"en": "eng", "fr": "fra", "zh": "zho", "nb": "nob", "deu": "deu"}
    assert feats.shape == (5, 103)
    assert np.isnan(feats).any() and np.nanmax(feats) <= 1 and np.nanmin(feats) >= 0
    with pytest.raises(UsageError, match="'xx'"):
        typology.language_features(["en", "xx"])


def test_cosine_skips_missing_values_with_own_norms():
    a = np.array([[1.0, 1.0, NAN], [1.0, NAN, 1.0]])
    d = typology.cosine_distances(a)
    # dot over features present in both = 1; each norm over its own values = sqrt(2)
    assert d[0, 1] == pytest.approx(1 - 1 / 2)
    assert d[0, 0] == pytest.approx(0)


def test_xelm_hand_checked_example():
    # 2-d unit vectors at these angles (degrees). Round 1, globally closest pair first: (170,175) 5deg,
    # (0,10) and (50,60) 10deg; 105 and 240 are left and pair with each other. Round 2, single linkage:
    # {0,10}-{50,60} 40deg is closest, leaving {105,240}+{170,175} (65deg via 240-175).
    ang = np.deg2rad([0, 10, 50, 60, 105, 170, 175, 240])
    f = np.stack([np.cos(ang), np.sin(ang)], 1)
    four = typology.xelm_groups(f, 4)
    assert four.tolist() == [0, 0, 1, 1, 2, 3, 3, 2]
    two = typology.xelm_groups(f, 2)
    assert two.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert typology.xelm_groups(f, 8).tolist() == list(range(8))
    with pytest.raises(UsageError, match=r"len\(langs\) / 2\^m.*8, 4, 2, 1"):
        typology.xelm_groups(f, 3)


def test_balanced_groups_balance_weights_and_keep_similar_together():
    ang = np.deg2rad([0, 5, 90, 95, 180, 185])
    f = np.stack([np.cos(ang), np.sin(ang)], 1)
    lab = typology.balanced_groups(f, 3)
    assert lab.tolist() == [0, 0, 1, 1, 2, 2]
    # a heavy language gets its own group even if it is typologically close to another
    w = np.array([10.0, 1, 1, 1, 1, 1])
    lab = typology.balanced_groups(f, 2, w)
    assert (lab == lab[0]).sum() == 1
    obj = typology.balanced_objective(lab, typology.cosine_distances(f), w, 2)
    assert obj < typology.balanced_objective(np.array([0, 0, 0, 1, 1, 1]), typology.cosine_distances(f), w, 2)
    with pytest.raises(UsageError, match="between 1 and"):
        typology.balanced_groups(f, 7)


def _corpus(root, docs):
    p = root / "train" / "00000" / "a.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


def test_typological_artifact_and_assignment_errors(tmp_path):
    from xlbtm.cluster.artifact import load_clusterer
    from xlbtm.cluster.train import train_typological_clusterer

    data = _corpus(
        tmp_path / "data",
        [
            {"text": "x" * 50, "lang": "en"},
            {"text": "y" * 10, "lang": "de"},
            {"text": "z" * 10, "lang": "fr"},
            {"text": "w" * 12, "lang": "es"},
        ],
    )
    c = train_typological_clusterer(["en", "de", "fr", "es"], 2, tmp_path / "typo", data_dir=data)
    c2 = load_clusterer(tmp_path / "typo")
    assert c2.kind == "typological" and c2.num_clusters == 2 and c2.lang_to_cluster == c.lang_to_cluster
    assert c2.fingerprint == c.fingerprint
    # en has most characters: alone in its group
    assert list(c.lang_to_cluster.values()).count(c.lang_to_cluster["en"]) == 1
    assert c2.predict([{"text": "a", "lang": "fr"}]).tolist() == [c.lang_to_cluster["fr"]]
    with pytest.raises(InputError, match=r"a.jsonl:3: .*lang 'ja'"):
        c2.predict([{"text": "a", "lang": "ja", "sp_id": "train/00000/a.jsonl|2"}])
    with pytest.raises(InputError, match=r"no string 'lang' field"):
        c2.predict([{"text": "a", "lang": None, "sp_id": "train/00000/a.jsonl|0"}])
    with pytest.raises(UsageError, match="not bare texts"):
        c2.predict(["just text"])
    x = train_typological_clusterer(["en", "de", "fr", "es"], 2, tmp_path / "x", mode="xelm")
    assert sorted(np.bincount(list(x.lang_to_cluster.values())).tolist()) == [2, 2]
    with pytest.raises(InputError, match="no documents with lang es"):
        _corpus(tmp_path / "d2", [{"text": "a", "lang": "en"}])
        train_typological_clusterer(["en", "es"], 2, tmp_path / "y", data_dir=tmp_path / "d2")
    with pytest.raises(UsageError, match="more than once"):
        train_typological_clusterer(["en", "en"], 1, tmp_path / "z")
