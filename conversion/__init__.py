"""Converter CLIs (thin wrappers over xlbtm.models / metaseq_ext); each has `--help`:

    python -m conversion.metaseq_to_hf     metaseq/fairseq XGLM or XLM-R (shards, MP parts, one file) -> HF dir
    python -m conversion.xlmr_to_hf        fairseq XLM-R model.pt -> HF XLMRobertaForMaskedLM dir
    python -m conversion.metaseq_to_xlbtm  metaseq/fairseq checkpoint -> consolidated.pt (xlbtm seed)
    python -m conversion.hf_to_xlbtm       HF dir -> consolidated.pt (xlbtm seed)
    python -m conversion.xlbtm_to_hf       consolidated.pt -> HF dir (safetensors) [+ tokenizer]
    python -m conversion.xlbtm_to_metaseq  consolidated.pt or HF dir -> metaseq consolidated.pt
"""
