"""Clustering (pipeline steps 1-2): featurize, balanced k-means, typology, artifacts, assignment.

- `featurize`: word | subword TF-IDF -> TruncatedSVD(100) -> L2 normalize; `Lsa.featurize_token_ids` is the
  reference for incremental prefix routing.
- `kmeans`: balanced k-means in torch (`fit_kmeans`, `balanced_assign`, `predict_nearest`).
- `typology`: URIEL syntax features from the lang2vec wheel; `xelm_groups`, `balanced_groups`.
- `artifact`: `load_clusterer(path)` -> TfidfClusterer | TypologicalClusterer (json + safetensors, no pickle).
- `train`: `train_tfidf_clusterer`, `train_typological_clusterer`, `sample_documents`, `evaluate`.
- `assign`: `assign_corpus` (local: forked worker processes | SLURM job arrays, resumable).
- `threads`: how many threads torch / BLAS / sentencepiece may use (`available_cpus`, `limit_threads`).
- `distance`: `sq_distances`, one formula for numpy (assignment) and torch (k-means, routing).
- `files`: cluster-file format (`read_manifest`, `iter_assignments`, `write_cluster_file`).
Submodules import their heavy dependencies lazily; importing this package is cheap.
"""
