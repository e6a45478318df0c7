"""Generating text from the ensemble: greedy or sampled, one KV cache per expert, routing updated per token.

    gens = generate(lm, [prompt_ids, ...], max_new_tokens=64, stop=["\\n\\n"], sample=False)
    gens[0].text, gens[0].ids, gens[0].finish, gens[0].mean_weights

Every step predicts the next token from the mixture of the experts' probabilities,

    p(x | prefix) = sum_k w_k(prefix) p_k(x | prefix),

with w(prefix) the cluster posterior of the prompt plus the tokens generated so far (`routing.PrefixState`:
one O(d) update per generated token for the subword featurizer) and top-k renormalized. Greedy decoding takes
the argmax of the mixture, sampling draws from it (at `sampling_temperature`, seeded).

Only the experts in some row's top-k run at a step. An expert keeps its own KV cache; one that enters the
top-k later first reads the tokens it missed in one chunk (prefill), so its states are exactly those of an
expert that had run all along. The model reads `</s> prompt` (as eval_ensemble reads a text); prompts longer
than the window minus `max_new_tokens` keep their last tokens for the model (routing reads the whole prompt).
Rows of a batch are left-padded; positions count each row's real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.errors import UsageError

log = get_logger("ensemble")


@dataclass
class Generation:
    ids: list[int]             # generated token ids (without the final </s>; up to and including a stop sequence)
    text: str                  # decoded, cut before the first stop sequence
    finish: str                # "eos", "stop", "length" (max_new_tokens)
    weights: np.ndarray        # [steps, K] routing weight of every expert for every generated token

    @property
    def mean_weights(self) -> np.ndarray:
        return self.weights.mean(0) if len(self.weights) else np.zeros(self.weights.shape[1])


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def generate(lm, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
             sample: bool = False, seed: int = 0, sampling_temperature: float = 1.0,
             stop_at_eos: bool = True) -> list[Generation]:
    """Generate for a batch of prompts (token ids, without `</s>`) from a `MixtureLM`."""
    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if sample and not (0 < sampling_temperature < float("inf")):
        raise UsageError(f"the sampling temperature must be finite and > 0, got {sampling_temperature}")
    keep = lm.window - max_new_tokens
    if keep < 1:
        raise UsageError(f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in the experts' "
                         f"{lm.window} positions")
    B, K = len(prompts), lm.num_models
    if B == 0:
        return []
    a, dev = lm.args, lm.device
    streams = [[a.eos_id] + [int(t) for t in p] for p in prompts]
    if any(len(s) > keep for s in streams):
        log.warning(f"prompts longer than {keep} tokens (the {lm.window}-token window minus --max-new-tokens) keep "
                    "their last tokens for the model")
        streams = [s[-keep:] for s in streams]
    P = max(len(s) for s in streams)
    seq = torch.full((B, P), a.pad_id, dtype=torch.long)
    pad = torch.ones((B, P), dtype=torch.bool)
    for b, s in enumerate(streams):
        seq[b, P - len(s):] = torch.tensor(s, dtype=torch.long)
        pad[b, P - len(s):] = False
    states = [lm.router.prefix_state(p) for p in prompts] if lm.router is not None else None
    caches: list = [None] * K
    fed = [0] * K                                  # columns of `seq` each expert has read
    gen: list[list[int]] = [[] for _ in range(B)]
    weights: list[list[np.ndarray]] = [[] for _ in range(B)]
    finish = [""] * B
    texts = [""] * B
    gen_rng = torch.Generator().manual_seed(int(seed)) if sample else None
    lm.stats.setdefault("gen_expert_steps", [])
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            alive = [b for b in range(B) if not finish[b]]
            if states is not None:
                d = [s.distances() for s in states]
                log_w = lm.log_weights(np.stack([x for x, _ in d]), np.asarray([e for _, e in d]))
            else:
                log_w = lm.log_weights(np.zeros((B, K)), np.ones(B, dtype=bool))  # [K, B]
            active = [k for k in range(K) if bool(torch.isfinite(log_w[k, alive]).any())]
            lm.stats["gen_expert_steps"].append(len(active))
            mixed = None
            L = seq.shape[1]
            for k in active:
                model = lm.models[k]
                if caches[k] is None:
                    caches[k] = model.new_cache()
                h = model.forward_hidden(seq[:, fed[k]:L].to(dev), pad[:, fed[k]:L].to(dev), cache=caches[k])
                fed[k] = L
                lp = torch.log_softmax(model.output(h[:, -1]).float(), dim=-1).cpu().double()
                term = lp + log_w[k][:, None]
                mixed = term if mixed is None else torch.logaddexp(mixed, term)
            if sample:
                probs = torch.softmax(mixed / sampling_temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen_rng)[:, 0]
            else:
                nxt = mixed.argmax(-1)
            col = torch.full((B,), a.pad_id, dtype=torch.long)
            col_pad = torch.ones(B, dtype=torch.bool)
            w = log_w.exp().T.numpy()
            for b in alive:
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
                    texts[b], hit = _cut(lm.tokenizer.decode(gen[b]), stop)
                    if hit:
                        finish[b] = "stop"
            seq = torch.cat([seq, col[:, None]], dim=1)
            pad = torch.cat([pad, col_pad[:, None]], dim=1)
            if all(finish):
                break
    out = []
    for b in range(B):
        text = texts[b] if finish[b] == "stop" else _cut(lm.tokenizer.decode(gen[b]), stop)[0]
        out.append(Generation(ids=gen[b], text=text, finish=finish[b] or "length",
                              weights=np.asarray(weights[b]).reshape(-1, K)))
    return out
