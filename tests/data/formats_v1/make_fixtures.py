"""Writes this directory: one file of every xlbtm on-disk format, as version 1 of each wrote it.

Run once per format version, never again for an existing one: the committed files are the record of what that
version wrote, and tests/test_format_versions.py must keep reading them. A new version gets its own directory
(formats_v2/) next to this one.

    PYTHONPATH=. python tests/data/formats_v1/make_fixtures.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ARGS = dict(arch="xglm", vocab_size=16, d_model=8, n_layers=1, n_heads=2, ffn_dim=16, max_positions=8,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def main() -> None:
    from xlbtm.formats.binarized import write_done, write_manifest as write_binarized_manifest
    from xlbtm.formats.clusterer import save_clusterer
    from xlbtm.formats.clusters import write_cluster_file, write_manifest, write_sidecar
    from xlbtm.formats.consolidated import save_consolidated
    from xlbtm.formats.expert import ExpertInfo, write_expert_info
    from xlbtm.models import ModelArgs, build_model
    from xlbtm.parallel.checkpoint import save_checkpoint

    for p in HERE.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
    rng = np.random.default_rng(0)
    save_clusterer(HERE / "clusterer", {"kind": "tfidf", "num_clusters": 2, "featurizer": "word", "params": {}},
                   {"idf": rng.random(4, dtype=np.float32) + 1, "components": rng.random((3, 4), dtype=np.float32),
                    "centroids": rng.random((2, 3), dtype=np.float32)}, vocab=["[UNK]", "alpha", "beta", "gamma"])
    save_clusterer(HERE / "typological", {"kind": "typological", "num_clusters": 2,
                                          "lang_to_cluster": {"de": 0, "en": 0, "ja": 1}},
                   {"features": rng.random((3, 5), dtype=np.float32)})

    clusters = HERE / "clusters"
    f = clusters / "train/00000/a.jsonl"
    write_cluster_file(f, [("train/00000/a.jsonl|0", 1), ("train/00000/a.jsonl|2", 0)])
    write_sidecar(f, {"fingerprint": "fp-clusterer", "rel": "train/00000/a.jsonl",
                      "input": {"size": 120, "mtime_ns": 1}, "documents": [1, 1], "chars": [30, 40],
                      "lang": {"en": {"documents": [1, 1], "chars": [30, 40]}}, "skipped_lines": 0})
    split = {"documents": [1, 1], "chars": [30, 40], "lang": {"en": {"documents": [1, 1], "chars": [30, 40]}},
             "files": ["train/00000/a.jsonl"], "skipped_lines": 0}
    write_manifest(clusters, {"format": "xlbtm-clusters/1", "fingerprint": "fp-clusterer", "num_clusters": 2,
                              "kind": "tfidf", "clusterer": "/clusterer", "data_dir": "/data", "documents": [1, 1],
                              "chars": [30, 40], "splits": {"train": split}})

    binarized = HERE / "binarized"
    (binarized / "train").mkdir(parents=True)
    for k, docs in enumerate([[[5, 6, 7]], [[8, 9], [10]]]):
        stream = np.concatenate([[2, *d] for d in docs]).astype(np.uint32)
        offsets = np.cumsum([0] + [len(d) + 1 for d in docs]).astype(np.int64)
        stream.tofile(binarized / "train" / f"cluster{k}.bin")
        offsets.tofile(binarized / "train" / f"cluster{k}.idx")
    write_done(binarized, "train", "fp-tok", "fp-clusterer", {"corpus": [["train/00000/a.jsonl", 120, 1]]},
               {"tokens": [4, 5]})
    write_binarized_manifest(binarized, {"tokenizer": "/tok", "tokenizer_fingerprint": "fp-tok",
                                         "clusterer_fingerprint": "fp-clusterer", "num_clusters": 2,
                                         "splits": {"train": {"tokens": [4, 5]}}})

    write_pairs_fixture()

    args = ModelArgs(**ARGS)
    torch.manual_seed(0)
    model = build_model(args)
    run = HERE / "run"
    write_expert_info(run, ExpertInfo(cluster=1, num_clusters=2, clusterer_fingerprint="fp-clusterer",
                                      objective="clm", model_args=args.to_dict(), tokenizer="/tok",
                                      tokenizer_fingerprint="fp-tok", seed_model="debug", run_name="cluster1",
                                      data={"train_tokens": 5}))
    save_checkpoint(run, 2, model, None, {"step": 2, "position": 8, "seed": 1})
    save_consolidated(run / "consolidated.pt", model.state_dict(), args, extra={"step": "step_2"})


def write_pairs_fixture() -> None:
    """Binarized parallel data (xlbtm-pairs/1; added with #18, written on its own: the files above predate it)."""
    from xlbtm.formats.binarized import write_done
    from xlbtm.formats.pairs import side_paths, write_pairs_manifest

    pairs = HERE / "pairs"
    (pairs / "train").mkdir(parents=True)
    for side, seqs in (("src", [[5, 6], [7]]), ("tgt", [[8], [9, 10, 11]])):
        b, i = side_paths(pairs, "train", side)
        np.concatenate(seqs).astype(np.uint32).tofile(b)
        np.cumsum([0] + [len(x) for x in seqs]).astype(np.int64).tofile(i)
    stats = {"pairs": 2, "tokens": {"src": 3, "tgt": 4}, "langs": {"en-de": 2}}
    write_done(pairs, "train", "fp-tok", None, {"corpus": [["train/00000/de.jsonl", 90, 1]]}, stats)
    write_pairs_manifest(pairs, {"data_dir": "/pairs", "tokenizer": "/tok", "tokenizer_fingerprint": "fp-tok",
                                 "splits": {"train": stats}})


if __name__ == "__main__":
    main()
