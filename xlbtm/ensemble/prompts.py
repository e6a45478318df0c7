"""`generate` end to end: prompts from --prompt or a jsonl file, the mixture loaded once, generations in
batches, each with the experts that carried its weight; written as jsonl when asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from xlbtm.corpus.reader import iter_json_objects
from xlbtm.ensemble.config import GenerateConfig
from xlbtm.ensemble.mixture import MixtureLM
from xlbtm.errors import InputError, UsageError
from xlbtm.io import atomic_open, check_replaceable, output_owner, refuse_overlap, write_output_record


def read_prompts(path, *, need_lang: bool = False, default_lang: str | None = None) -> list[tuple[str, str | None]]:
    """(prompt, lang) of every line of a jsonl file; a bad line is an InputError naming file and line.
    `need_lang` (a lang ensemble): each line needs a string "lang", or `default_lang` (--lang) stands in."""
    path = Path(path)
    if not path.is_file():
        raise InputError("--input file not found", path)
    out = []
    for line, obj in iter_json_objects(path, 'a "prompt" (or "text") string'):
        text = obj.get("prompt", obj.get("text"))
        if not isinstance(text, str):
            raise InputError('expected an object with a "prompt" (or "text") string', path, line)
        lang = obj.get("lang", default_lang)
        if need_lang and not (isinstance(lang, str) and lang):
            raise InputError(
                '--ensemble-type lang: this prompt has no "lang" string (add one, or give --lang)', path, line
            )
        out.append((text, lang if isinstance(lang, str) else None))
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
            "--tokenizer": cfg.tokenizer,
            **{f"--model-paths {m}": m for m in cfg.model_paths},
        },
    )
    owner = output_owner(
        "generate",
        {
            "--input": cfg.input,
            "--experts-dir": cfg.experts_dir,
            "--path-to-clusterer": cfg.path_to_clusterer,
            **{f"--model-paths {m}": m for m in cfg.model_paths},
        },
    )
    if cfg.output:
        check_replaceable(cfg.output, "--output", owner, is_dir=False)
    by_lang = cfg.ensemble_type == "lang"
    if cfg.prompt is not None:
        if by_lang and not cfg.lang:
            raise UsageError("--ensemble-type lang routes the prompt by its language: give --lang")
        read = [(cfg.prompt, cfg.lang)]
    else:
        read = read_prompts(cfg.input, need_lang=by_lang, default_lang=cfg.lang)
    prompts, langs = [t for t, _ in read], [lang for _, lang in read]
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
        tokenizer_dir=cfg.tokenizer,
    )
    names = (
        ["average"]
        if lm.ensemble_type == "average"
        else [f"expert{e.cluster}" if lm.num_models > 1 else e.name for e in lm.experts]
    )
    results = []
    for s in range(0, len(prompts), cfg.batch_size):
        batch = prompts[s : s + cfg.batch_size]
        batch_langs = langs[s : s + cfg.batch_size]
        gens = lm.generate(
            [lm.tokenizer.encode(t) for t in batch],
            max_new_tokens=cfg.max_new_tokens,
            stop=cfg.stop,
            sample=cfg.sample,
            seed=cfg.seed + s,
            sampling_temperature=cfg.sampling_temperature,
            langs=batch_langs if by_lang else None,
        )
        for prompt, lang, g in zip(batch, batch_langs, gens):
            w = g.mean_weights
            results.append(
                {
                    "prompt": prompt,
                    "generation": g.text,
                    "tokens": len(g.ids),
                    "finish": g.finish,
                    "expert_weights": {names[k]: float(w[k]) for k in range(len(w))},
                    **({"lang": lang} if by_lang else {}),
                }
            )
            if on_result is not None:
                on_result(results[-1])
    if cfg.output:
        write_output_record(cfg.output, owner, is_dir=False)
        with atomic_open(cfg.output) as f:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return results
