import json

import pytest

from xlbtm.errors import InputError
from xlbtm.formats import clusters as files


def test_write_read_roundtrip(tmp_path):
    d = tmp_path / "clusters"
    p = files.cluster_file_path(d, "train/00000/a.jsonl.gz")
    assert p == d / "train/00000/a.jsonl"
    pairs = [("train/00000/a.jsonl.gz|0", 1), ("train/00000/a.jsonl.gz|1", 0)]
    assert files.write_cluster_file(p, pairs) == 2
    files.write_cluster_file(files.cluster_file_path(d, "train/2/b.jsonl"), [("train/2/b.jsonl|0", 1)])
    files.write_cluster_file(files.cluster_file_path(d, "train/10/c.jsonl"), [("train/10/c.jsonl|0", 0)])
    files.write_manifest(d, {"format": files.FORMAT, "fingerprint": "abc", "num_clusters": 2})
    assert files.read_manifest(d)["num_clusters"] == 2
    got = list(files.iter_assignments(d, "train"))
    # numeric shard order: 00000, 2, 10
    assert got == pairs + [("train/2/b.jsonl|0", 1), ("train/10/c.jsonl|0", 0)]
    assert [json.loads(x) for x in p.read_text().splitlines()][0] == {"sp_id": pairs[0][0], "cluster": 1}


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        files.read_manifest(tmp_path)
    with pytest.raises(InputError, match="no cluster files"):
        list(files.iter_assignments(tmp_path, "train"))
    p = tmp_path / "train" / "x.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text('{"sp_id": "a|0", "cluster": 0}\n{"sp_id": "a|1", "cluster": 5}\n')
    files.write_manifest(tmp_path, {"fingerprint": "f", "num_clusters": 2})
    with pytest.raises(InputError, match=r"x.jsonl:2: cluster 5 out of range"):
        list(files.iter_assignments(tmp_path, "train"))
    p.write_text('{"sp_id": "a|0", "cluster": [1]}\nnot json\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: malformed JSON"):
        list(files.iter_assignments(tmp_path, "train"))
