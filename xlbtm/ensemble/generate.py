"""Generating text from the ensemble: greedy or sampled, one KV cache per expert, routing updated per token.

    gens = generate(lm, [prompt_ids, ...], max_new_tokens=64, stop=["\\n\\n"], sample=False)
    gens[0].text, gens[0].ids, gens[0].finish, gens[0].mean_weights

Every step predicts the next token from the mixture of the experts' probabilities,

    p(x | prefix) = sum_k w_k(prefix) p_k(x | prefix),

with w(prefix) the cluster posterior of the prompt plus the tokens generated so far (`routing.PrefixState`:
one O(d) update per generated token for the subword featurizer) and top-k renormalized. Greedy decoding takes
the argmax of the mixture, sampling draws from it (at `sampling_temperature`, seeded).

An expert runs only on the rows whose top-k holds it (top-1: one expert per row and token). It keeps its own KV
cache; a row routed to it later first reads the tokens it missed in one chunk (prefill), so its states are
exactly those of an expert that had read the row all along. The model reads `</s> prompt` (as eval_ensemble reads a text); prompts longer
than the window minus `max_new_tokens` keep their last tokens for the model (routing reads the whole prompt).
Rows of a batch are left-padded; positions count each row's real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.errors import UsageError

log = get_logger("ensemble")


@dataclass
class Generation:
    ids: list[int]  # generated token ids (without the final </s>; up to and including a stop sequence)
    text: str  # decoded, cut before the first stop sequence
    finish: str  # "eos", "stop", "length" (max_new_tokens)
    weights: np.ndarray  # [steps, K] routing weight of every expert for every generated token

    @property
    def mean_weights(self) -> np.ndarray:
        return self.weights.mean(0) if len(self.weights) else np.zeros(self.weights.shape[1])


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def continuation_text(tokenizer, prompt: Sequence[int], new: Sequence[int]) -> str:
    """The text `new` adds after `prompt`, so that prompt text + this reads as the whole sequence decodes.
    Decoding the new ids alone loses what depends on their left context: SentencePiece drops a leading word
    boundary ("син" + "▁фуйщэйху" printed "синфуйщэйху")."""
    head = tokenizer.decode(list(prompt))
    whole = tokenizer.decode(list(prompt) + list(new))
    return whole[len(head) :] if whole.startswith(head) else tokenizer.decode(list(new))


def generate(
    lm,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    sample: bool = False,
    seed: int = 0,
    sampling_temperature: float = 1.0,
    stop_at_eos: bool = True,
    langs: Sequence[str | None] | None = None,
) -> list[Generation]:
    """Generate for a batch of prompts (token ids, without `</s>`) from a `MixtureLM`. `langs`: each prompt's
    language, for a lang ensemble (X-ELM: the whole prompt goes to the expert of its language's cluster)."""
    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if sample and not (0 < sampling_temperature < float("inf")):
        raise UsageError(f"the sampling temperature must be finite and > 0, got {sampling_temperature}")
    keep = lm.window - max_new_tokens
    if keep < 1:
        raise UsageError(
            f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in the experts' {lm.window} positions"
        )
    B, K = len(prompts), lm.num_models
    if B == 0:
        return []
    a, dev = lm.args, lm.device
    streams = [[a.eos_id] + [int(t) for t in p] for p in prompts]
    if any(len(s) > keep for s in streams):
        log.warning(
            f"prompts longer than {keep} tokens (the {lm.window}-token window minus --max-new-tokens) keep "
            "their last tokens for the model"
        )
        streams = [s[-keep:] for s in streams]
    P = max(len(s) for s in streams)
    seq = torch.full((B, P), a.pad_id, dtype=torch.long)
    pad = torch.ones((B, P), dtype=torch.bool)
    for b, s in enumerate(streams):
        seq[b, P - len(s) :] = torch.tensor(s, dtype=torch.long)
        pad[b, P - len(s) :] = False
    states = [lm.router.prefix_state(p) for p in prompts] if lm.router is not None else None
    by_lang = None
    if getattr(lm, "lang_to_cluster", None) is not None and K > 1:
        by_lang = lm.lang_log_weights(list(langs) if langs is not None else [None] * B)  # [K, B], fixed
    caches: list = [None] * K
    fed = torch.zeros((K, B), dtype=torch.long)  # columns of `seq` expert k has read, per row
    gen: list[list[int]] = [[] for _ in range(B)]
    weights: list[list[np.ndarray]] = [[] for _ in range(B)]
    finish = [""] * B
    texts = [""] * B
    gen_rng = torch.Generator().manual_seed(int(seed)) if sample else None
    lm.stats.setdefault("gen_expert_steps", [])
    lm.stats.setdefault("gen_expert_rows", [])
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            alive = torch.tensor([b for b in range(B) if not finish[b]], dtype=torch.long)
            if states is not None:
                d = [s.distances() for s in states]
                log_w = lm.log_weights(np.stack([x for x, _ in d]), np.asarray([e for _, e in d]))
            elif by_lang is not None:
                log_w = by_lang
            else:
                log_w = lm.log_weights(np.zeros((B, K)), np.ones(B, dtype=bool))  # [K, B]
            mixed = torch.full((B, a.vocab_size), float("-inf"), dtype=torch.float64)
            L = seq.shape[1]
            n_experts = n_rows = 0
            for k in range(K):
                R = alive[torch.isfinite(log_w[k, alive])]  # the rows that route to expert k now
                if not len(R):
                    continue
                model = lm.models[k]
                if caches[k] is None:
                    caches[k] = model.new_cache(batch_size=B)
                # each row reads the columns it has not read yet (one; more after being routed elsewhere)
                n = L - fed[k, R]
                T = int(n.max())
                cols = (L - T + torch.arange(T))[None, :]
                late = cols < (L - n)[:, None]  # columns this row has already read
                tokens = torch.where(late, a.pad_id, seq[R][:, L - T :])
                tok_pad = late | pad[R][:, L - T :]
                h = model.forward_hidden(tokens.to(dev), tok_pad.to(dev), cache=caches[k], rows=R.to(dev))
                fed[k, R] = L
                lp = torch.log_softmax(model.output(h[:, -1]).float(), dim=-1).cpu().double()
                mixed[R] = torch.logaddexp(mixed[R], lp + log_w[k, R][:, None])
                n_experts, n_rows = n_experts + 1, n_rows + len(R)
            lm.stats["gen_expert_steps"].append(n_experts)
            lm.stats["gen_expert_rows"].append(n_rows)
            nxt = torch.zeros(B, dtype=torch.long)
            if sample:
                probs = torch.softmax(mixed[alive] / sampling_temperature, dim=-1)
                nxt[alive] = torch.multinomial(probs, 1, generator=gen_rng)[:, 0]
            else:
                nxt[alive] = mixed[alive].argmax(-1)
            col = torch.full((B,), a.pad_id, dtype=torch.long)
            col_pad = torch.ones(B, dtype=torch.bool)
            w = log_w.exp().T.numpy()
            for b in alive.tolist():
                t = int(nxt[b])
                weights[b].append(w[b])
                if stop_at_eos and t == a.eos_id:
                    finish[b] = "eos"
                    continue
                gen[b].append(t)
                col[b], col_pad[b] = t, False
                if states is not None:
                    states[b].push([t])
                if stop:
                    texts[b], hit = _cut(continuation_text(lm.tokenizer, prompts[b], gen[b]), stop)
                    if hit:
                        finish[b] = "stop"
            seq = torch.cat([seq, col[:, None]], dim=1)
            pad = torch.cat([pad, col_pad[:, None]], dim=1)
            if all(finish):
                break
    out = []
    for b in range(B):
        text = texts[b] if finish[b] == "stop" else _cut(continuation_text(lm.tokenizer, prompts[b], gen[b]), stop)[0]
        out.append(
            Generation(
                ids=gen[b], text=text, finish=finish[b] or "length", weights=np.asarray(weights[b]).reshape(-1, K)
            )
        )
    return out
