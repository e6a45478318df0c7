"""Per-cluster token streams: binarize (tokenize once), CLM blocks, MLM masking, resumable sample order."""
