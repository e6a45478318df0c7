"""fairseq XLM-R checkpoint (model.pt with encoder.sentence_encoder.* keys) -> Hugging Face
XLMRobertaForMaskedLM directory (config.json + model.safetensors [+ tokenizer])."""

from __future__ import annotations

import conversion.metaseq_to_hf as _impl
from xlbtm.cli import run_script


def main(argv=None):
    _impl.ARCH = "xlmr"
    p = _impl.build_parser()
    p.prog = "python -m conversion.xlmr_to_hf"
    p.description = __doc__
    try:
        p.parse_args(argv)  # parse here so --help and usage errors name this tool
        return _impl.main(argv)
    finally:
        _impl.ARCH = None


if __name__ == "__main__":
    run_script("convert", main)
