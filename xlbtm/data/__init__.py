"""Per-cluster token streams and translation pairs: binarize (tokenize once), CLM blocks, MLM masking, TLM
pair samples, the MLM+TLM mix, resumable sample order.

    from xlbtm.data.binarize import binarize, binarize_pairs
    from xlbtm.formats.binarized import read_binarized_manifest, bin_path, idx_path   # the layout binarize writes
    from xlbtm.formats.pairs import read_pairs_manifest, side_paths                   # ... and binarize_pairs
    from xlbtm.data.dataset import TokenStream, CLMDataset, MLMDataset, PairStream, TLMDataset, MLMTLMDataset, \
        Sampler, rank_indices, collate
"""
