"""Generate text with an ensemble of experts (or one model), printing which experts carried the weight.

    python -m xlbtm.scripts.generate --experts-dir SERIALIZATION/8_clusters --path-to-clusterer C \
        --prompt "Die Katze" --max-new-tokens 40 [--temperature 0.1] [--topk 1] [--sample --seed 0]
    python -m xlbtm.scripts.generate --experts-dir E --path-to-clusterer C --input prompts.jsonl [--output out.jsonl]

Every token is drawn from the mixture of the experts' probabilities, weighted by the cluster posterior of
the prompt plus the text generated so far (updated token by token); --topk 1 runs only the best expert.
--input: one JSON object per line with "prompt" (or "text"); --output writes one result per line.
"""

from __future__ import annotations

from xlbtm.cli import make_parser, run_script
from xlbtm.config import add_config_args, config_from_args
from xlbtm.ensemble.config import GenerateConfig


def build_parser():
    p = make_parser("generate", __doc__.split("\n\n")[0])
    add_config_args(p, GenerateConfig)  # every flag, its default and help: GenerateConfig's fields
    return p


def _print(r: dict) -> None:
    w = r["expert_weights"]
    carried = ", ".join(f"{name} {v:.2f}" for name, v in sorted(w.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    print(f"{r['prompt']}{r['generation']}")
    print(f"  [{r['tokens']} tokens, {r['finish']}; experts: {carried or 'none'}]", flush=True)


def main(argv=None):
    from xlbtm.ensemble.prompts import run_generation

    run_generation(config_from_args(GenerateConfig, build_parser().parse_args(argv)), on_result=_print)
    return 0


if __name__ == "__main__":
    run_script("generate", main)
