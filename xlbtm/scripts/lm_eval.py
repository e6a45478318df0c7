"""Run EleutherAI's lm-evaluation-harness with `--model xlbtm` registered (needs `pip install 'xlbtm[eval]'`).

    python -m xlbtm.scripts.lm_eval --model xlbtm \
        --model_args experts_dir=E,clusterer=C,ensemble_type=clustering,temperature=0.1,topk=1 \
        --tasks xnli_de,xstorycloze_en --num_fewshot 0 --batch_size 8 --output_path OUT

Every flag is lm-eval's own (`lm_eval --help`): this command only registers the `xlbtm` model first, because
the plain `lm_eval` command discovers no models outside the lm-eval package. `--model hf` etc. still work.
"""

from __future__ import annotations

import sys

from xlbtm.cli import run_script
from xlbtm.errors import UsageError


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from xlbtm.ensemble.harness import cli_main
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "lm_eval":
            raise
        raise UsageError(
            "lm-evaluation-harness is not installed: pip install 'xlbtm[eval]' (or pip install 'lm-eval>=0.4,<0.5')"
        ) from None
    return cli_main(argv)


if __name__ == "__main__":
    run_script("lm_eval", main)
