"""`generate` end to end: prompts from --prompt or a jsonl file, the mixture loaded once, generations in
batches, each with the experts that carried its weight; written as jsonl when asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from xlbtm.corpus.reader import iter_json_objects
from xlbtm.ensemble.config import GenerateConfig
from xlbtm.ensemble.mixture import MixtureLM
from xlbtm.errors import InputError
from xlbtm.io import atomic_open, refuse_overlap


def read_prompts(path) -> list[str]:
    """The prompts of a jsonl file; a bad line is an InputError naming file and line."""
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


def run_generation(cfg: GenerateConfig, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """One result per prompt: {prompt, generation, tokens, finish, expert_weights}, each handed to `on_result`
    as soon as its batch is done; also written to cfg.output (jsonl, atomically) at the end when given."""
    refuse_overlap(
        {"--output": cfg.output},
        {
            "--input": cfg.input,
            "--experts-dir": cfg.experts_dir,
            "--path-to-clusterer": cfg.path_to_clusterer,
            **{f"--model-paths {m}": m for m in cfg.model_paths},
        },
    )
    prompts = [cfg.prompt] if cfg.prompt is not None else read_prompts(cfg.input)
    lm = MixtureLM.load(
        experts_dir=cfg.experts_dir,
        model_paths=cfg.model_paths or None,
        clusterer=cfg.path_to_clusterer,
        ensemble_type=cfg.ensemble_type,
        temperature=cfg.temperature,
        topk=cfg.topk,
        device=cfg.device,
        dtype=cfg.dtype,
        purpose="generation",
    )
    names = (
        ["average"]
        if lm.ensemble_type == "average"
        else [f"expert{e.cluster}" if lm.num_models > 1 else e.name for e in lm.experts]
    )
    results = []
    for s in range(0, len(prompts), cfg.batch_size):
        batch = prompts[s : s + cfg.batch_size]
        gens = lm.generate(
            [lm.tokenizer.encode(t) for t in batch],
            max_new_tokens=cfg.max_new_tokens,
            stop=cfg.stop,
            sample=cfg.sample,
            seed=cfg.seed + s,
            sampling_temperature=cfg.sampling_temperature,
        )
        for prompt, g in zip(batch, gens):
            w = g.mean_weights
            results.append(
                {
                    "prompt": prompt,
                    "generation": g.text,
                    "tokens": len(g.ids),
                    "finish": g.finish,
                    "expert_weights": {names[k]: float(w[k]) for k in range(len(w))},
                }
            )
            if on_result is not None:
                on_result(results[-1])
    if cfg.output:
        with atomic_open(cfg.output) as f:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return results
