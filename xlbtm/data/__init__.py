"""Per-cluster token streams: binarize (tokenize once), CLM blocks, MLM masking, resumable sample order.

    from xlbtm.data.binarize import binarize, read_binarized_manifest, bin_path, idx_path
    from xlbtm.data.dataset import TokenStream, CLMDataset, MLMDataset, Sampler, rank_indices, collate
"""
