"""Per-cluster token streams: binarize (tokenize once), CLM blocks, MLM masking, resumable sample order.

    from xlbtm.data.binarize import binarize
    from xlbtm.formats.binarized import read_binarized_manifest, bin_path, idx_path   # the layout it writes
    from xlbtm.data.dataset import TokenStream, CLMDataset, MLMDataset, Sampler, rank_indices, collate
"""
