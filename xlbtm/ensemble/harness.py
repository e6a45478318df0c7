"""The `xlbtm` model of EleutherAI's lm-evaluation-harness (`pip install 'xlbtm[eval]'`): XNLI, XStoryCloze,
XCOPA, PAWS-X, Belebele ... on an ensemble of experts or one model.

    python -m xlbtm.scripts.lm_eval --model xlbtm \
        --model_args experts_dir=E,clusterer=C,ensemble_type=clustering,temperature=0.1,topk=1 \
        --tasks xstorycloze_en,xnli_de --num_fewshot 0 --batch_size 8

or from Python, after `import xlbtm.ensemble.harness` (which registers the name):

    lm_eval.simple_evaluate(model="xlbtm", model_args="experts_dir=E,clusterer=C", tasks=[...])

The plain `lm_eval` command only knows the models shipped inside lm-eval (0.4 discovers no third-party models),
so `xlbtm.scripts.lm_eval` registers this one and then runs lm-eval's own command line, flags unchanged.

model_args: experts_dir (or model_path: one expert run dir / consolidated.pt), clusterer, ensemble_type
(clustering | uniform | dense | average), temperature, topk, route (context | prefix), stride (rolling
windows), context_window, cbtm_compat, seed (sampling), max_gen_toks, dtype (float32 | bfloat16 | float16,
or fp32 | bf16 | fp16), device (default: $XLBTM_DEVICE, else cuda when available).
What each request computes is `xlbtm.ensemble.mixture` (loglikelihood, loglikelihood_rolling) and
`xlbtm.ensemble.generate`.

This is the only module of xlbtm that imports lm_eval.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import lm_eval.models  # noqa: F401  (lm-eval's own models stay registered next to ours)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from xlbtm.cli import get_logger
from xlbtm.ensemble.config import DEFAULT_TEMPERATURE, DEFAULT_TOPK
from xlbtm.ensemble.mixture import ROUTES, MixtureLM
from xlbtm.errors import UsageError
from xlbtm.runtime import resolve_device

log = get_logger("ensemble")

DEFAULT_MAX_GEN_TOKS = 256


def _batch_size(value) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return 16
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"batch_size must be a positive integer or auto, got {value!r}") from None
    if n <= 0:
        raise UsageError(f"batch_size must be positive, got {n}")
    return n


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _typed(key: str, value, kind: type, *, optional: bool = False):
    """One `--model_args` value as `kind` (lm-eval hands over strings, or numbers it guessed): a value that
    does not parse is a UsageError naming the key, never silently something else (`cbtm_compat=no` is False,
    `topk=1.5` is refused, not 1)."""
    if value is None and optional:
        return None
    text = str(value).strip()
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise UsageError(f"--model_args {key}={value}: expected true or false")
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else int(text)
        return float(text)
    except ValueError:
        raise UsageError(
            f"--model_args {key}={value}: expected {'an integer' if kind is int else 'a number'}"
        ) from None


@register_model("xlbtm")
class XlbtmLM(LM):
    def __init__(
        self,
        experts_dir: str | None = None,
        clusterer: str | None = None,
        ensemble_type: str | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        topk: int = DEFAULT_TOPK,
        model_path: str | None = None,
        route: str = "context",
        stride: int | None = None,
        context_window: int | None = None,
        cbtm_compat: bool = False,
        seed: int = 0,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        dtype: str = "float32",
        batch_size=None,
        max_batch_size=None,
        device: str | None = None,
        **unknown,
    ):
        super().__init__()

        if unknown:
            raise UsageError(
                f"unknown --model_args key(s) {sorted(unknown)} for --model xlbtm; known: experts_dir, "
                "model_path, clusterer, ensemble_type, temperature, topk, route, stride, context_window, "
                "cbtm_compat, seed, max_gen_toks, dtype"
            )
        if route not in ROUTES:
            raise UsageError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
        temperature, topk = _typed("temperature", temperature, float), _typed("topk", topk, int)
        cbtm_compat = _typed("cbtm_compat", cbtm_compat, bool)
        context_window = _typed("context_window", context_window, int, optional=True)
        stride, seed = _typed("stride", stride, int, optional=True), _typed("seed", seed, int)
        max_gen_toks = _typed("max_gen_toks", max_gen_toks, int)
        if max_gen_toks <= 0:
            raise UsageError(f"--model_args max_gen_toks must be positive, got {max_gen_toks}")
        if stride is not None and stride <= 0:
            raise UsageError(f"--model_args stride must be positive, got {stride}")
        self.lm = MixtureLM.load(
            experts_dir=experts_dir,
            model_paths=[str(model_path)] if model_path else None,
            clusterer=clusterer,
            ensemble_type=ensemble_type,
            temperature=temperature,
            topk=topk,
            cbtm_compat=cbtm_compat,
            device=device,
            context_window=context_window,
            batch_size=_batch_size(batch_size),
            dtype=str(dtype),
            purpose="lm-eval",
        )
        self.route, self.stride, self.seed = route, stride, seed
        self.max_gen_toks = max_gen_toks
        self._device = self.lm.device
        log.info(
            f"xlbtm: {self.lm.num_models} model(s), {self.lm.ensemble_type}, T={self.lm.temperature} "
            f"topk={self.lm.topk}, route={route}, window {self.lm.window}"
        )

    # --------------------------------------------------------------------------------------------- encoding
    @property
    def tokenizer_name(self) -> str:
        return f"xlbtm-{self.lm.tokenizer.fingerprint[:16]}"

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) with the continuation the tail of the whole text's encoding: the
        tokens are exactly those of `context + continuation` (as eval_ensemble tokenizes a document), and
        the context's trailing spaces belong to the continuation (SentencePiece marks a word's space)."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        enc = self.lm.tokenizer.encode
        whole = enc(context + continuation)
        ctx = enc(context) if context else []
        return whole[: len(ctx)], whole[len(ctx) :]

    # ------------------------------------------------------------------------------------------- requests
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*r.args) for r in requests]
        out = self.lm.loglikelihood(pairs, route=self.route)
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        docs = [self.lm.tokenizer.encode(r.args[0]) for r in requests]
        out = self.lm.loglikelihood_rolling(docs, stride=self.stride)
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, res)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1] or {}, sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for idx in groups.values():
            kw = dict(requests[idx[0]].args[1] or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            if max_new >= self.lm.window:
                log.warning(
                    f"max_gen_toks {max_new} does not fit the experts' {self.lm.window} positions; "
                    f"generating at most {self.lm.window - 1}"
                )
                max_new = self.lm.window - 1
            sample = bool(kw.pop("do_sample", False))
            temp = float(kw.pop("temperature", 1.0) or 0.0)
            if sample and temp == 0.0:
                sample = False  # lm-eval's convention: temperature 0 is greedy
            if kw:
                log.warning(f"xlbtm ignores generation kwargs {sorted(kw)}")
            bs = self.lm.batch_size
            for s in range(0, len(idx), bs):
                chunk = idx[s : s + bs]
                gens = self.lm.generate(
                    [self.lm.tokenizer.encode(requests[i].args[0]) for i in chunk],
                    max_new_tokens=max_new,
                    stop=until,
                    sample=sample,
                    seed=self.seed + s,
                    sampling_temperature=temp if sample else 1.0,
                )
                for i, g in zip(chunk, gens):
                    out[i] = g.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, g.text)
        return out  # type: ignore[return-value]


def cli_main(argv: Sequence[str]) -> int:
    """lm-eval's own command line (`lm_eval ...`, flags unchanged) with `--model xlbtm` registered."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(argv)
    if not any(a == "--device" or a.startswith("--device=") for a in argv):
        # lm-eval releases differ in their default (some pass cuda:0, a traceback on a CPU-only machine):
        # without a --device, xlbtm's own policy ($XLBTM_DEVICE, else cuda when visible, else cpu) decides
        argv += ["--device", str(resolve_device(None))]
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
