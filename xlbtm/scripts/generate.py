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
from xlbtm.ensemble.config import DEFAULT_TEMPERATURE
from xlbtm.errors import InputError, UsageError
from xlbtm.runtime import dtype_arg


def build_parser():
    p = make_parser("generate", __doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experts-dir", default=None, help="directory holding the expert run dirs")
    src.add_argument("--model-paths", default=None,
                     help="comma-separated expert run dirs or consolidated.pt files (one for a single model)")
    p.add_argument("--path-to-clusterer", default=None, help="clusterer artifact dir (routes the experts)")
    p.add_argument("--ensemble-type", default=None, choices=["clustering", "uniform", "dense", "average"],
                   help="default: clustering with --path-to-clusterer, dense for one model")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", default=None, help="the prompt text")
    prompts.add_argument("--input", default=None, help="jsonl file of prompts ({\"prompt\": ...} per line)")
    p.add_argument("--output", default=None, help="write the generations as jsonl here (default: print only)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    p.add_argument("--stop", action="append", default=[],
                   help="stop sequence (repeatable); the text is cut before it")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="routing temperature")
    p.add_argument("--topk", type=int, default=-1, help="experts run per token (-1: all)")
    p.add_argument("--sample", action="store_true", help="sample from the mixture instead of greedy decoding")
    p.add_argument("--sampling-temperature", type=float, default=1.0, help="with --sample: softmax temperature")
    p.add_argument("--seed", type=int, default=0, help="with --sample: random seed")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:<n> (default: $XLBTM_DEVICE, else cuda when "
                   "available, else cpu)")
    p.add_argument("--dtype", default="float32", type=dtype_arg,
                   help="the experts' weights: float32 | bfloat16 | float16 (or fp32 | bf16 | fp16; bfloat16 halves "
                        "GPU memory)")
    return p


def read_prompts(path) -> list[str]:
    """The prompts of a jsonl file; a bad line is an InputError naming file and line."""
    from pathlib import Path

    from xlbtm.corpus.reader import iter_json_objects

    path = Path(path)
    if not path.is_file():
        raise InputError("--input file not found", path)
    out = []
    for line, obj in iter_json_objects(path, 'a "prompt" (or "text") string'):
        text = obj.get("prompt", obj.get("text"))
        if not isinstance(text, str):
            raise InputError('expected an object with a "prompt" (or "text") string', path, line)
        out.append(text)
    if not out:
        raise InputError("no prompts in --input", path)
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.prompt is None and args.input is None:
        raise UsageError("give --prompt TEXT or --input prompts.jsonl")
    if args.batch_size <= 0:
        raise UsageError("--batch-size must be positive")
    from xlbtm.io import refuse_overlap

    refuse_overlap({"--output": args.output}, {"--input": args.input, "--experts-dir": args.experts_dir,
                                               "--path-to-clusterer": args.path_to_clusterer,
                                               **{f"--model-paths {m}": m for m in (args.model_paths or "").split(",")
                                                  if m}})
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.input)
    from xlbtm.ensemble.mixture import MixtureLM

    lm = MixtureLM.load(experts_dir=args.experts_dir,
                        model_paths=[m for m in (args.model_paths or "").split(",") if m] or None,
                        clusterer=args.path_to_clusterer, ensemble_type=args.ensemble_type,
                        temperature=args.temperature, topk=args.topk, device=args.device, dtype=args.dtype,
                        purpose="generation")
    names = ["average"] if lm.ensemble_type == "average" else \
        [f"expert{e.cluster}" if lm.num_models > 1 else e.name for e in lm.experts]
    results = []
    for s in range(0, len(prompts), args.batch_size):
        batch = prompts[s:s + args.batch_size]
        gens = lm.generate([lm.tokenizer.encode(t) for t in batch], max_new_tokens=args.max_new_tokens,
                           stop=args.stop, sample=args.sample, seed=args.seed + s,
                           sampling_temperature=args.sampling_temperature)
        for prompt, g in zip(batch, gens):
            w = g.mean_weights
            carried = ", ".join(f"{names[k]} {w[k]:.2f}" for k in sorted(range(len(w)), key=lambda k: -w[k])
                                if w[k] >= 0.005)
            print(f"{prompt}{g.text}")
            print(f"  [{len(g.ids)} tokens, {g.finish}; experts: {carried or 'none'}]")
            results.append({"prompt": prompt, "generation": g.text, "tokens": len(g.ids), "finish": g.finish,
                            "expert_weights": {names[k]: float(w[k]) for k in range(len(w))}})
    if args.output:
        import json

        from xlbtm.io import atomic_open

        with atomic_open(args.output) as f:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    run_script("generate", main)
