"""The ensemble as one language model, loaded once: log-likelihoods of continuations, of whole documents, and
(with `xlbtm.ensemble.generate`) text generation. This is what the lm-evaluation-harness adapter
(`xlbtm.ensemble.harness`) and `python -m xlbtm.scripts.generate` call.

    lm = MixtureLM.load(experts_dir=E, clusterer=C, temperature=0.1, topk=1)
    lm.loglikelihood([(context_ids, continuation_ids), ...], route="context")  # [(logprob, is_greedy)]
    lm.loglikelihood_rolling([doc_ids, ...], stride=None)                      # [logprob], every token once

Conventions are eval_ensemble's, so the numbers agree with it for the same text:
- a text is the stream `</s> t_0 .. t_{L-1}`: the model reads `</s>` before the first token;
- expert k's weight for predicting token j is softmax_k(-||h - c_k||^2 / T) over the featurization h of a
  prefix of the text (`xlbtm.ensemble.routing`), optionally top-k renormalized;
- the ensemble's probability mixes the experts' probabilities, never their logits:
  p(t_j) = sum_k w_k p_k(t_j | t_<j) (`xlbtm.ensemble.mixing.mix`, in log space).

Routing of a continuation (`route`):
- "context" (the default; X-ELM's and c-BTM's few-shot protocol): the prompt decides the experts. The weights
  are the posterior of the context alone and stay fixed over the continuation, so every answer of a multiple
  choice question is scored by the same mixture.
- "prefix": per-token routing as in perplexity evaluation: token j is weighted by the posterior of the prefix
  t_<j (context plus the continuation so far), exactly eval_ensemble's per-token weights.
Whole documents (`loglikelihood_rolling`) have no separate context: every token is routed by its prefix.

Top-k routing runs an expert only on the requests (rows of a batch) that give it weight: with topk=1 and route
"context", one expert reads each request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.cluster.artifact import load_clusterer
from xlbtm.ensemble import mixing, routing
from xlbtm.ensemble.config import DEFAULT_TEMPERATURE, DEFAULT_TOPK
from xlbtm.ensemble.experts import find_experts, load_model, resolve_ensemble
from xlbtm.ensemble.generate import generate
from xlbtm.ensemble.merge import average_states
from xlbtm.ensemble.routing import Router, router_from_clusterer
from xlbtm.ensemble.scoring import _gather_logprobs, clm_windows, scoring_window
from xlbtm.errors import InputError, UsageError
from xlbtm.models import ModelArgs
from xlbtm.runtime import resolve_device, resolve_dtype
from xlbtm.tokenizer import Tokenizer

log = get_logger("ensemble")

ROUTES = ("context", "prefix")
LM_TYPES = ("clustering", "uniform", "dense", "average")
LOGIT_ELEMENTS = 1 << 26  # logits per chunk when the mixture's full distribution is formed (256 MiB fp32)


@dataclass
class Row:
    """One forward row: model input, targets, and which targets count (with their routing distances)."""

    inp: list[int]  # model input (starts with </s> when it starts the text)
    tgt: list[int]  # the token each input position predicts
    first: int  # targets first..len(tgt)-1 are scored
    sqdist: np.ndarray  # [n_scored, K] squared distances of each scored token's routing prefix
    empty: np.ndarray  # [n_scored] bool: routing prefix featurizes to zero


@dataclass
class MixtureLM:
    models: list  # nn.Modules in eval mode on `device` (one per expert; one for dense/average)
    args: ModelArgs  # of the first model (ids, positions)
    tokenizer: Tokenizer
    experts: list  # xlbtm.ensemble.experts.Expert, ordered by cluster
    router: Router | None = None  # clustering; None: one model, or uniform
    lang_to_cluster: dict[str, int] | None = None  # lang (generation only): the typological clusterer's map
    ensemble_type: str = "clustering"
    temperature: float = DEFAULT_TEMPERATURE
    topk: int = DEFAULT_TOPK
    cbtm_compat: bool = False
    window: int = 2048  # most positions one forward reads (the experts' trained context)
    device: str = "cpu"
    batch_size: int = 16
    # counters for tests and benchmarks: experts run per scoring batch, (expert, row) forwards, rows and tokens
    stats: dict = field(
        default_factory=lambda: {"expert_forwards": [], "expert_rows": 0, "rows": 0, "scored_tokens": 0}
    )

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        *,
        experts_dir: str | None = None,
        model_paths: Sequence[str] | None = None,
        clusterer: str | None = None,
        ensemble_type: str | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        topk: int = DEFAULT_TOPK,
        cbtm_compat: bool = False,
        device: str | None = None,
        context_window: int | None = None,
        batch_size: int = 16,
        dtype: str = "float32",
        purpose: str = "scoring",
        tokenizer_dir: str | None = None,
    ) -> MixtureLM:
        """Experts from `experts_dir` (or explicit run dirs / consolidated.pt files in `model_paths`), routed by
        the clusterer artifact at `clusterer`. `ensemble_type` default: clustering with a clusterer, dense for
        a single model. `dtype`: the experts' weights (float32, or bfloat16 / float16 to halve GPU memory; any
        spelling `xlbtm.runtime.resolve_dtype` takes: fp32, bf16, fp16 too). `device`: `resolve_device`'s
        (None: $XLBTM_DEVICE, else cuda when visible, else cpu). Log-probabilities are always computed in
        float32. `purpose` words the error for masked-LM experts ("generation", "lm-eval"); "generation" also
        takes ensemble_type lang (each prompt routed by the language the caller gives `generate`). `tokenizer_dir`:
        the tokenizer of one model that has no expert.json (`experts.read_expert`)."""
        if bool(experts_dir) == bool(model_paths):
            raise UsageError("give exactly one of experts_dir (--experts-dir) and model_path(s)")
        defaulted = ensemble_type is None
        if defaulted:
            ensemble_type = "clustering" if clusterer else "dense"
        if ensemble_type == "lang" and purpose != "generation":
            raise UsageError(
                f"ensemble_type lang routes a whole document by its language, which {purpose} requests do not "
                "carry: use clustering (or eval_ensemble --ensemble-type lang on a corpus with lang fields)"
            )
        if ensemble_type not in (*LM_TYPES, "lang"):
            raise UsageError(
                f"ensemble_type must be one of {', '.join(LM_TYPES)} for scoring and generation, got {ensemble_type!r}"
            )
        if not (0 < float(temperature) < math.inf):
            raise UsageError(f"temperature must be finite and > 0, got {temperature}")
        if int(topk) == 0 or int(topk) < -1:
            raise UsageError(f"topk takes -1 (every expert) or a count >= 1, got {topk}")
        if batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        if context_window is not None and context_window <= 0:
            raise UsageError(f"context_window must be positive, got {context_window}")
        weights_dtype = resolve_dtype(dtype)
        if ensemble_type in ("clustering", "lang") and not clusterer:
            raise UsageError(
                f"ensemble_type {ensemble_type} routes by the clusterer: give clusterer= "
                "(--path-to-clusterer), or ensemble_type uniform"
            )
        if defaulted and ensemble_type == "dense":  # one model: more than one is a forgotten clusterer
            n = len(model_paths) if model_paths else len(find_experts(cast(str, experts_dir)))  # (one is given)
            if n > 1:
                raise UsageError(
                    f"several experts but no clusterer to route them: give clusterer= "
                    f"(--path-to-clusterer), or ensemble_type=uniform ({n} models found)"
                )
        # eval_ensemble's own resolution (experts matched to clusters, clusterer and tokenizer checks)
        experts, clus, tokenizer = resolve_ensemble(
            ensemble_type,
            experts_dir=experts_dir,
            model_paths=list(model_paths or []),
            clusterer_path=clusterer,
            clusterer=load_clusterer(clusterer) if clusterer and ensemble_type in ("clustering", "lang") else None,
            tokenizer=tokenizer_dir,
        )
        objective = experts[0].objective
        if objective != "clm":
            raise UsageError(
                f"{experts[0].run_dir} is a masked LM (objective {objective}); {purpose} needs causal "
                "(clm) experts: a masked LM has no left-to-right probabilities to score or "
                "generate with"
            )
        device = resolve_device(device)
        window, _ = scoring_window(experts, context_window)
        if ensemble_type == "average":
            model, args = load_model(experts[0], average_states(experts))
            models = [model]
        else:
            loaded = [load_model(e) for e in experts]
            models, args = [m for m, _ in loaded], loaded[0][1]
        models = [m.to(device=device, dtype=weights_dtype) for m in models]
        router = None
        if ensemble_type == "clustering" and len(models) > 1:
            router = router_from_clusterer(clus, tokenizer)
        return cls(
            models=models,
            args=args,
            tokenizer=tokenizer,
            experts=experts,
            router=router,
            lang_to_cluster=dict(clus.lang_to_cluster) if ensemble_type == "lang" else None,
            ensemble_type=ensemble_type,
            temperature=float(temperature),
            topk=int(topk),
            cbtm_compat=bool(cbtm_compat),
            window=int(window),
            device=str(device),
            batch_size=int(batch_size),
        )

    @property
    def num_models(self) -> int:
        return len(self.models)

    # ---------------------------------------------------------------------------------------------- routing
    def distances(self, token_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(sqdist [T, K], empty [T]) for every prefix [0, j) of the text: the router's own, or zeros when
        there is no router (one model, uniform)."""
        if self.router is None:
            return np.zeros((len(token_ids), self.num_models)), np.ones(len(token_ids), dtype=bool)
        return self.router.distances(token_ids)

    def log_weights(self, sqdist: np.ndarray, empty: np.ndarray) -> torch.Tensor:
        """[N, K] distances -> [K, N] float64 log routing weights (`routing.log_weights` for clustering)."""
        K, N = self.num_models, len(sqdist)
        if self.lang_to_cluster is not None and K > 1:  # never a silent uniform mixture in place of lang routing
            raise UsageError("ensemble_type lang routes whole prompts by language: generate(..., langs=[...])")
        if K == 1:
            return torch.zeros((1, N), dtype=torch.float64)
        if self.router is None:  # uniform
            return mixing.uniform_log_weights(K, N)
        return routing.log_weights(
            torch.from_numpy(np.asarray(sqdist, dtype=np.float64)),
            self.temperature,
            topk=self.topk,
            cbtm_compat=self.cbtm_compat,
            empty=torch.from_numpy(np.asarray(empty, dtype=bool)),
        )

    def lang_log_weights(self, langs: Sequence[str | None]) -> torch.Tensor:
        """[K, B] log weights routing row b wholly to the expert of langs[b]'s cluster (ensemble_type lang)."""
        assert self.lang_to_cluster is not None  # lang ensembles only
        row_of = {e.cluster: k for k, e in enumerate(self.experts)}
        which = []
        for lang in langs:
            if not lang:
                raise UsageError("--ensemble-type lang routes each prompt by its language: give --lang (or 'lang')")
            cluster = self.lang_to_cluster.get(lang)
            if cluster is None:
                raise UsageError(
                    f"--lang {lang}: the typological clusterer knows {', '.join(sorted(self.lang_to_cluster))}"
                )
            if cluster not in row_of:
                raise UsageError(f"--lang {lang} belongs to cluster {cluster}, whose expert is not loaded")
            which.append(row_of[cluster])
        return mixing.one_hot_log_weights(torch.tensor(which, dtype=torch.long), self.num_models)

    # ---------------------------------------------------------------------------------------------- scoring
    def loglikelihood(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], route: str = "context"
    ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per (context_ids, continuation_ids).

        The model reads `</s> context continuation` (the last `window` positions when longer); is_greedy:
        every continuation token is the argmax of the mixture. An empty continuation scores 0."""
        if route not in ROUTES:
            raise UsageError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
        rows: list[Row] = []
        where: list[int | None] = []  # each request's row, None: an empty continuation
        for ctx, cont in requests:
            ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
            whole = ctx + cont
            if len(cont) > self.window:
                raise InputError(
                    f"a continuation of {len(cont)} tokens does not fit the {self.window} positions the experts read"
                )
            if not cont:
                where.append(None)
                continue
            # row j of distances() is the prefix [0, j): row len(ctx) is the context alone
            sq, em = self.distances(whole if route == "prefix" else whole[: len(ctx) + 1])
            if route == "prefix":
                sq, em = sq[len(ctx) :], em[len(ctx) :]
            else:  # the context's posterior, for every continuation token
                sq = np.repeat(sq[len(ctx) : len(ctx) + 1], len(cont), axis=0)
                em = np.repeat(em[len(ctx) : len(ctx) + 1], len(cont))
            stream = [self.args.eos_id] + whole
            inp, tgt = stream[:-1][-self.window :], whole[-self.window :]
            where.append(len(rows))
            rows.append(Row(inp, tgt, len(tgt) - len(cont), sq, em))
        scored = self._score(rows)
        return [(0.0, True) if i is None else scored[i] for i in where]

    def loglikelihood_rolling(self, docs: Sequence[Sequence[int]], stride: int | None = None) -> list[float]:
        """log p(document) per token-id document, every token scored exactly once: windows of `window`
        positions every `stride` (default: the window; smaller gives later tokens more context), as
        eval_ensemble's `clm_windows`; each token routed by its prefix."""
        stride = stride or self.window
        if not 0 < stride <= self.window:
            raise UsageError(f"stride must be in [1, {self.window}] (the context window), got {stride}")
        rows, owner = [], []
        for d, ids in enumerate(docs):
            ids = [int(t) for t in ids]
            sq, em = self.distances(ids)
            stream = [self.args.eos_id] + ids
            for a, e, f in clm_windows(len(ids), self.window, stride):
                rows.append(Row(stream[a:e], ids[a:e], f - a, sq[f:e], em[f:e]))
                owner.append(d)
        out = [0.0] * len(docs)
        for d, (lp, _) in zip(owner, self._score(rows, greedy=False)):
            out[d] += lp
        return out

    def _score(self, rows: list[Row], greedy: bool = True) -> list[tuple[float, bool]]:
        """(summed ensemble log-prob of the scored targets, all of them the mixture's argmax) per row.

        Without `greedy` (whole documents) each expert's target log-probs come from eval_ensemble's own
        `_gather_logprobs` (no [positions, V] tensor is kept); with it, the mixture's full distribution is formed
        chunk by chunk (LOGIT_ELEMENTS logits at a time) for the argmax."""
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inp))
        pad_id, dev, V = self.args.pad_id, self.device, self.args.vocab_size
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                batch = [rows[i] for i in order[s : s + self.batch_size]]
                T = max(len(r.inp) for r in batch)
                inp = torch.full((len(batch), T), pad_id, dtype=torch.long)
                tgt = torch.zeros((len(batch), T), dtype=torch.long)
                need = torch.zeros((len(batch), T), dtype=torch.bool)
                for b, r in enumerate(batch):
                    inp[b, : len(r.inp)] = torch.tensor(r.inp, dtype=torch.long)
                    tgt[b, : len(r.tgt)] = torch.tensor(r.tgt, dtype=torch.long)
                    need[b, r.first : len(r.tgt)] = True
                pad = torch.arange(T)[None, :] >= torch.tensor([len(r.inp) for r in batch])[:, None]
                log_w = self.log_weights(
                    np.concatenate([r.sqdist for r in batch]), np.concatenate([r.empty for r in batch])
                )  # [K, M], row-major order
                M = log_w.shape[1]
                targets = tgt[need]
                row_of = torch.nonzero(need)[:, 0]  # the batch row of every scored position
                lp_tgt = torch.zeros((self.num_models, M), dtype=torch.float64)
                # expert k runs on the rows where it has weight (top-k: a row's own experts only)
                runs = {}
                for k in range(self.num_models):
                    hit = (
                        torch.zeros(len(batch), dtype=torch.long).index_add_(0, row_of, torch.isfinite(log_w[k]).long())
                        > 0
                    )
                    if bool(hit.any()):
                        runs[k] = (torch.nonzero(hit)[:, 0], hit[row_of])  # (rows, their scored positions)
                self.stats["expert_forwards"].append(len(runs))
                self.stats["expert_rows"] += sum(len(r) for r, _ in runs.values())
                is_greedy = torch.zeros(M, dtype=torch.bool)
                if not greedy:
                    for k, (R, pos) in runs.items():
                        lp = _gather_logprobs(
                            self.models[k], inp[R].to(dev), pad[R].to(dev), tgt[R].to(dev), need[R].to(dev)
                        )
                        lp_tgt[k, pos] = lp[need[R].to(dev)].cpu().double()
                else:
                    hidden = {
                        k: self.models[k].forward_hidden(inp[R].to(dev), pad[R].to(dev))[need[R].to(dev)]
                        for k, (R, _) in runs.items()
                    }
                    index = {k: torch.cumsum(pos.long(), 0) - 1 for k, (_, pos) in runs.items()}
                    step = max(1, LOGIT_ELEMENTS // V)
                    for c in range(0, M, step):
                        sl = slice(c, min(c + step, M))
                        acc = torch.full((sl.stop - sl.start, V), float("-inf"), device=dev)
                        for k, (_, pos) in runs.items():
                            here = pos[sl]
                            if not bool(here.any()):
                                continue
                            lp = torch.log_softmax(self.models[k].output(hidden[k][index[k][sl][here]]).float(), -1)
                            lp_tgt[k, c + torch.nonzero(here)[:, 0]] = (
                                lp.gather(1, targets[sl][here][:, None].to(dev))[:, 0].cpu().double()
                            )
                            term = lp + log_w[k, sl][here].to(device=dev, dtype=lp.dtype)[:, None]
                            h = here.to(dev)
                            acc[h] = torch.logaddexp(acc[h], term)
                        is_greedy[sl] = acc.argmax(1).cpu() == targets[sl]
                mixed = mixing.mix(lp_tgt, log_w)  # the ensemble's log-prob of every scored token
                o = 0
                for j, r in enumerate(batch):
                    n = len(r.tgt) - r.first
                    out[order[s + j]] = (float(mixed[o : o + n].sum()), bool(is_greedy[o : o + n].all()))
                    o += n
        self.stats["rows"] += len(rows)
        self.stats["scored_tokens"] += sum(len(r.tgt) - r.first for r in rows)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[Sequence[int]], **kw):
        """See `xlbtm.ensemble.generate.generate`."""
        return generate(self, prompts, **kw)
