"""Deprecated converter CLIs, kept as aliases for a release; use `python -m xlbtm.scripts.convert --from X --to Y`
(`xlbtm convert ...`), which takes the same flags:

    python -m conversion.metaseq_to_hf     = --from metaseq --to hf
    python -m conversion.xlmr_to_hf        = --from fairseq --to hf --arch xlmr
    python -m conversion.metaseq_to_xlbtm  = --from metaseq --to xlbtm
    python -m conversion.hf_to_xlbtm       = --from hf --to xlbtm
    python -m conversion.xlbtm_to_hf       = --from xlbtm --to hf
    python -m conversion.xlbtm_to_metaseq  = --from xlbtm --to metaseq
"""
