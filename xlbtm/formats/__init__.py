"""One home for xlbtm's own on-disk formats: each has one reader and one writer here, with a version field.

    consolidated   consolidated.pt: one expert's weights in metaseq's layout (+ the xlbtm header)
    expert         expert.json: what one expert is (cluster, objective, model args, tokenizer, its config)
    binarized      the binarized dir: token streams, manifest.json, each split's done.json
    convert        between xlbtm, metaseq / fairseq and Hugging Face: a reader per source, a writer per target

Still defined next to the code that writes them, to move here (issue #14): cluster files and their manifest /
sidecars (`xlbtm.cluster.files`), the clusterer artifact (`xlbtm.cluster.artifact`), the DCP checkpoint layout
and `latest` (`xlbtm.parallel.checkpoint`). Foreign formats (metaseq / fairseq shards, Hugging Face dirs) are
read and written by `metaseq_ext` and `xlbtm.models.hf`.
"""
