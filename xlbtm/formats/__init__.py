"""Every on-disk format of xlbtm: each has one reader and one writer here, and xlbtm's own carry a version field.

xlbtm's own                                  foreign
clusterer    the clusterer artifact dir      metaseq   metaseq / fairseq checkpoints (sharded, model parallel)
clusters     cluster files, manifest.json,   hf        Hugging Face model dirs
             per-file sidecars
binarized    token streams, manifest.json,   seed      --seed-model: any of the above, or a preset
             each split's done.json          convert   between xlbtm, metaseq / fairseq and Hugging Face
checkpoints  a run's step_<n>/ dirs, latest,
             train_state.json
expert       expert.json
consolidated consolidated.pt
layout       where a serialization dir puts them: <K>_clusters/<run>.cluster<k>/ (consolidated.pt,
             hf/, checkpoints/, train_log.jsonl), logs/, data-bin/; experts listed by expert.json's cluster
lock         a dir's `.lock` (flock + who holds it): one trainer per run dir, one writer per binarized dir
"""
