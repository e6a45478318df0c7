"""metaseq/fairseq artifacts, read without metaseq/fairseq/fairscale installed.

- `sharded.load_metaseq_checkpoint(path)`: FSDP-flattened shards (`<prefix>-model_part-M-shardN.pt`),
  model-parallel parts, or a single file -> one full state dict (metaseq names, q/k/v unfused) + cfg.
- `sharded.consolidate_shard_weights(weights, metadata)`: fairscale-compatible unflattening (pure tensors).
- `convert.metaseq_to_xlbtm(path, model_size=None)`: -> (xlbtm state dict, ModelArgs, info).
- `consolidated.save_consolidated / load_consolidated`: one consolidated.pt per expert, metaseq layout.
- `writer.write_sharded_checkpoint(...)`: produce sharded fixtures in metaseq's exact layout (tests, demos).
"""
