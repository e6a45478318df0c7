"""Merging experts by parameter averaging (merge_experts; eval_ensemble --ensemble-type average).

    experts = select_experts(find_experts(EXPERTS_DIR), [0, 2])     # cluster ids, None = all
    weights, method = resolve_weights("posterior", experts, data_dir=D)  # or "uniform", "0.5,0.5"
    merge_experts(experts, weights, OUT, method=method)              # OUT/consolidated.pt, OUT/hf/, OUT/expert.json

The merged model is sum_k w_k theta_k. Three ways to choose w:
  uniform    1/K each (c-BTM's --average)
  explicit   the user's weights, one per expert in cluster order: non-negative, summing to 1
  posterior  BTM's: the ensemble's posterior over the experts given held-out text, by Bayes' rule with a
             uniform prior, averaged over documents: w_k = mean_d p(k | d), p(k | d) = softmax_k log p_k(d),
             with log p_k(d) expert k's log-likelihood of document d as eval_ensemble scores it (CLM, windows
             of the trained context). Unlike c-BTM's uniform prior it looks at data the experts did not train on.

Averaging is only meaningful between models that started from the same weights (the same seed model) and
share tokenizer, objective and architecture; anything else is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.ensemble.config import MergeConfig
from xlbtm.ensemble.experts import Expert, find_experts, load_expert_tokenizer, load_state
from xlbtm.ensemble.mixing import doc_sums
from xlbtm.ensemble.scoring import prepare_docs, read_scores, score_expert, scoring_window
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.consolidated import save_consolidated
from xlbtm.formats.expert import EXPERT_JSON, ExpertInfo, write_expert_info
from xlbtm.formats.hf import save_hf
from xlbtm.formats.layout import consolidated_path, hf_dir
from xlbtm.io import atomic_dir, check_replaceable, output_owner, read_json, refuse_overlap, write_output_record
from xlbtm.models import ModelArgs

log = get_logger("merge")

WEIGHT_METHODS = ("uniform", "posterior")
WEIGHT_SUM_TOL = 1e-6


# ---------------------------------------------------------------------------------------------- experts


def select_experts(experts: list, clusters: list[int] | None = None) -> list:
    """The experts to merge, ordered by cluster id: all of them, or those of `clusters` (`--experts 0,2`)."""
    by_cluster: dict[int, Expert] = {}
    for e in experts:
        if e.cluster in by_cluster:
            raise InputError(f"two experts for cluster {e.cluster}: {by_cluster[e.cluster].run_dir} and {e.run_dir}")
        by_cluster[e.cluster] = e
    if clusters is None:
        return [by_cluster[k] for k in sorted(by_cluster)]
    unknown = sorted(set(clusters) - set(by_cluster))
    if unknown:
        raise UsageError(f"--experts: no expert for cluster(s) {unknown} (have {sorted(by_cluster)})")
    if len(set(clusters)) != len(clusters):
        raise UsageError(f"--experts lists a cluster twice: {clusters}")
    return [by_cluster[k] for k in sorted(clusters)]


def root_seed(info: ExpertInfo) -> str:
    """The seed an expert was branched from; for one grown by add_experts (whose --seed-model was another
    expert's weights), the seed that expert came from (expert.json `init.root_seed_model`)."""
    return (info.init or {}).get("root_seed_model") or info.seed_model


def root_seed_identity(info: ExpertInfo) -> str | None:
    """The identity of the initial weights an expert descends from (`xlbtm.formats.seed.seed_identity`): its
    own, or for one grown from another expert's weights (`init.parent`), the identity its siblings started from
    (`init.root_seed_identity`, recorded by add_experts). None: an expert.json from before identities."""
    init = info.init or {}
    if init.get("parent"):
        return init.get("root_seed_identity")
    return info.seed_identity


# experts already warned about (merge checks the same experts several times: once is enough)
_warned_unknown_seed: set[str] = set()


def check_one_seed(experts: list, action: str = "merge") -> str | None:
    """The experts descend from one initialization, or one InputError naming the first expert.json that differs
    (`action`: what is refused, "merge", "grow the ensemble", ...). Compared by seed identity: two experts of
    preset `debug` drawn with --seed 1 and --seed 7, or of one seed path whose file was replaced in between,
    differ, and one seed copied to two paths does not. When an expert.json has no identity (older xlbtm), the
    seed strings are compared too, with a warning. Returns the shared identity (None when some expert has none)."""
    first = experts[0]
    known = [(e, root_seed_identity(e.meta)) for e in experts]
    for e, ident in known:
        if ident is None and str(e.run_dir) not in _warned_unknown_seed:
            _warned_unknown_seed.add(str(e.run_dir))
            log.warning(
                f"{e.run_dir / EXPERT_JSON} records no seed identity (written by an older xlbtm): only its seed "
                f"name {root_seed(e.meta)!r} can be compared, not the initial weights (retrain it to record them)"
            )
    with_ident = [(e, i) for e, i in known if i is not None]
    for e, ident in with_ident[1:]:
        ref, ref_ident = with_ident[0]
        if ident != ref_ident:
            raise InputError(
                f"cannot {action}: another initialization than {ref.run_dir / EXPERT_JSON} ({ident} != {ref_ident}; "
                "averaging models from different initializations is meaningless): use experts branched from one seed",
                e.run_dir / EXPERT_JSON,
            )
    if len(with_ident) == len(experts):
        return with_ident[0][1]  # the weights decide: one seed copied to two paths is still one seed
    for e in experts[1:]:
        if root_seed(e.meta) != root_seed(first.meta):
            raise InputError(
                f"cannot {action}: another seed model than {first.run_dir / EXPERT_JSON} "
                f"({root_seed(e.meta)!r} != {root_seed(first.meta)!r}; averaging models from different "
                "initializations is meaningless)",
                e.run_dir / EXPERT_JSON,
            )
    return None


def check_mergeable(experts: list) -> None:
    """Experts can be averaged only if they share the initialization (`check_one_seed`), the tokenizer, the
    objective and the architecture; one InputError naming the first expert.json that differs."""
    if not experts:
        raise UsageError("no experts to merge")
    check_one_seed(experts, "merge")
    checks = {
        "tokenizer_fingerprint": "tokenizer",
        "objective": "objective",
        "model_args": "architecture (model_args)",
    }

    def value(e, key):
        return e.objective if key == "objective" else getattr(e.meta, key)

    first = experts[0]
    for e in experts[1:]:
        for key, what in checks.items():
            if value(e, key) != value(first, key):
                mine, theirs = (str(value(x, key))[:48] for x in (e, first))
                detail = "" if key == "model_args" else f": {mine!r} != {theirs!r}"
                raise InputError(
                    f"cannot merge: another {what} than {first.run_dir / EXPERT_JSON}{detail}", e.run_dir / EXPERT_JSON
                )


def merge_owner(experts: list) -> dict:
    """Whose output a merged dir is: merge_experts over these experts (the rule of `xlbtm.io.check_replaceable`)."""
    return output_owner("merge_experts", {f"expert {e.cluster}": e.run_dir for e in experts})


def _earlier_merge(out: Path) -> bool:
    """A merge written before output records existed: its expert.json says what was merged."""
    ej = out / EXPERT_JSON
    return ej.is_file() and "merged_from" in ((read_json(ej) or {}).get("data") or {})


def check_output_dir(output_dir, experts: list, inputs: dict | None = None) -> None:
    """Before anything is computed or written: refuse an --output-dir that is, holds or lies inside an expert
    (or another input, `inputs`: flag -> path), or an existing output that is not an earlier merge of the same
    experts (the output dir is replaced whole)."""
    out = Path(output_dir)
    refuse_overlap({"--output-dir": out}, {**{f"expert {e.run_dir}": e.run_dir for e in experts}, **(inputs or {})})
    check_replaceable(out, "--output-dir", merge_owner(experts), is_dir=True, legacy=_earlier_merge)


# ---------------------------------------------------------------------------------------------- weights


def parse_weights(spec: str, n: int) -> list[float] | str:
    """`--weights`: "uniform", "posterior", or n comma-separated non-negative numbers summing to 1."""
    spec = spec.strip()
    if spec in WEIGHT_METHODS:
        return spec
    try:
        w = [float(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(
            f"--weights takes uniform, posterior or comma-separated numbers like 0.5,0.3,0.2; got {spec!r}"
        ) from None
    check_weights(w, n)
    return w


def check_weights(w: list[float], n: int) -> None:
    """n finite, non-negative weights summing to 1 (within WEIGHT_SUM_TOL); else a UsageError naming --weights."""
    shown = ",".join(f"{x:g}" for x in w)
    if len(w) != n:
        raise UsageError(f"--weights gives {len(w)} weight(s) for {n} expert(s) (one per expert, in cluster order)")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise UsageError(f"--weights must be finite and non-negative, got {shown}")
    if abs(sum(w) - 1.0) > WEIGHT_SUM_TOL:
        raise UsageError(f"--weights must sum to 1 (within {WEIGHT_SUM_TOL:g}), got {shown} (sum {sum(w):.8g})")


def resolve_weights(
    spec: str,
    experts: list,
    *,
    data_dir=None,
    subset: str = "valid",
    max_docs: int | None = None,
    job_dir=None,
    device=None,
    batch_tokens: int = 8192,
) -> tuple[list[float], str]:
    """(weights, method) for `--weights` (`parse_weights`); posterior weights score `data_dir`'s `subset`."""
    w = parse_weights(spec, len(experts))
    if w == "uniform":
        return [1.0 / len(experts)] * len(experts), "uniform"
    if w == "posterior":
        if data_dir is None:
            raise UsageError("--weights posterior needs --data-dir (held-out documents to compute the posterior on)")
        return posterior_weights(
            experts, data_dir, subset, max_docs=max_docs, job_dir=job_dir, device=device, batch_tokens=batch_tokens
        ), "posterior"
    assert not isinstance(w, str)  # parse_weights: uniform, posterior or a list
    return w, "explicit"


def posterior_weights(
    experts: list,
    data_dir,
    subset: str,
    *,
    langs: set[str] | None = None,
    max_docs: int | None = None,
    job_dir=None,
    device=None,
    batch_tokens: int = 8192,
) -> list[float]:
    """BTM's merge weights: the mean over held-out documents d of the posterior p(k | d) over the experts.

    p(k | d) = softmax_k(log p_k(d)) (Bayes' rule, uniform prior), log p_k(d) = expert k's total log-likelihood
    of the document's tokens, scored exactly as eval_ensemble scores them (`score_expert`: the whole document,
    in windows of the experts' trained context). Returns one weight per expert, in the order given; they sum
    to 1.

    data_dir / subset: a corpus split (`valid`, `valid/<subset>`); `langs` keeps only the documents whose
    `lang` is in it (e.g. the new languages' documents, to initialize an expert for them); `max_docs` the
    first that many documents (after the `langs` filter). `job_dir` caches the tokenized documents and the
    per-expert scores (an eval job dir's caches are reused when they match); None: a temporary dir, removed
    after. Causal LMs only: a masked LM's pseudo-likelihood is not a likelihood, so its "posterior" is not one.
    """
    check_mergeable(experts)
    if experts[0].objective != "clm":
        raise UsageError(
            f"--weights posterior needs causal LMs (their likelihood of a document); these experts "
            f"are {experts[0].objective}: use uniform or explicit weights"
        )
    if max_docs is not None and max_docs <= 0:
        raise UsageError("--max-docs must be positive")
    tokenizer = load_expert_tokenizer(experts[0])
    window, stride = scoring_window(experts)
    cache = (
        contextlib.nullcontext(job_dir)
        if job_dir is not None
        else tempfile.TemporaryDirectory(prefix="xlbtm-posterior-")
    )
    with cache as job:
        job = Path(job)
        job.mkdir(parents=True, exist_ok=True)
        docs = prepare_docs(job, data_dir, subset, tokenizer, None, max_docs, langs=langs)
        per_doc = []
        for e in experts:
            # read right after scoring: two experts of one cluster id (from different ensembles) share a name
            name = f"expert{e.cluster}"
            score_expert(job, name, e, docs, device=device, batch_tokens=batch_tokens, window=window, stride=stride)
            per_doc.append(
                doc_sums(torch.from_numpy(read_scores(job, name).astype(np.float64)), torch.from_numpy(docs.offsets))
            )
    post = torch.softmax(torch.stack(per_doc), dim=0)  # [K, D]: p(k | d), each column sums to 1
    weights = post.mean(dim=1).tolist()
    log.info(
        f"posterior weights over {docs.num_docs} documents of {subset}: "
        + ", ".join(f"{e.cluster}: {w:.4f}" for e, w in zip(experts, weights))
    )
    return weights


# ---------------------------------------------------------------------------------------------- averaging


def average_states(experts: list, weights: list[float] | None = None) -> dict:
    """sum_k w_k theta_k over the experts' state dicts (uniform unless `weights` are given).

    Floating tensors accumulate in (at least) float32 and are cast back to the experts' stored dtype, so one
    expert with weight 1.0 comes back bit for bit. Other tensors (integer buffers) must be equal in every
    expert and are copied. States are loaded one at a time: memory is the sum plus one expert.
    """
    # every averaging (merge_experts, eval/generate/lm_eval --ensemble-type average, add_experts --init
    # average) goes through here: models of different initializations are refused, not averaged
    check_mergeable(experts)
    w = list(weights) if weights is not None else [1.0 / len(experts)] * len(experts)
    if len(w) != len(experts):
        raise ValueError(f"{len(w)} weights for {len(experts)} experts")
    acc: dict = {}
    dtypes: dict = {}
    for i, (e, wi) in enumerate(zip(experts, w)):
        state = load_state(e)
        if i > 0 and set(state) != set(acc):
            diff = sorted(set(state) ^ set(acc))
            raise InputError(
                f"cannot merge: its weights have other tensors than {experts[0].source()} "
                f"({len(diff)} differ, e.g. {diff[0]})",
                e.source(),
            )
        for k, v in state.items():
            if i > 0 and tuple(v.shape) != tuple(acc[k].shape):
                raise InputError(
                    f"cannot merge: {k} has shape {tuple(v.shape)}, {tuple(acc[k].shape)} in {experts[0].source()}",
                    e.source(),
                )
            if not torch.is_floating_point(v):
                if i == 0:
                    acc[k] = v.clone()
                elif not torch.equal(v, acc[k]):
                    raise InputError(
                        f"cannot merge: non-floating tensor {k} differs from {experts[0].source()}'s "
                        "(it cannot be averaged)",
                        e.source(),
                    )
                continue
            if i == 0:
                dtypes[k] = v.dtype
                acc[k] = v.to(torch.promote_types(v.dtype, torch.float32)) * wi
            else:
                acc[k].add_(v.to(acc[k].dtype), alpha=wi)
        del state
    return {k: v.to(dtypes[k]) if k in dtypes else v for k, v in acc.items()}


# ---------------------------------------------------------------------------------------------- writing


def merge_experts(
    experts: list, weights: list[float], output_dir: str | os.PathLike, *, method: str, run_name: str = "merged"
) -> dict[str, Path]:
    """Average the experts with `weights` and write `output_dir` as an expert of its own (a K=1 model):
    consolidated.pt, hf/ (weights + config + tokenizer) and expert.json, which records what was merged and how.
    `eval_ensemble --ensemble-type dense --model-paths output_dir` evaluates it like any model.

    The dir is built beside `output_dir` and renamed into place when complete. Refused: an `output_dir`
    that is, holds or lies inside an expert, or an existing non-empty dir that is not an earlier merge.
    """
    check_mergeable(experts)
    check_weights(list(weights), len(experts))
    out = Path(output_dir)
    check_output_dir(out, experts)
    ref = experts[0].meta
    args = ModelArgs.from_dict(ref.model_args)
    state = average_states(experts, weights)
    sources = [str(e.weights or e.run_dir) for e in experts]
    data: dict[str, Any] = {
        "merged_from": sources,
        "clusters": [e.cluster for e in experts],
        "weights": list(map(float, weights)),
        "weights_method": method,
    }
    trained = [e.meta.data.get("tokens_per_sample") for e in experts]
    if all(trained):  # eval scores in windows of the trained context: the experts' shortest
        data["tokens_per_sample"] = min(int(t) for t in trained)
    info = ExpertInfo(
        cluster=0,
        num_clusters=1,
        clusterer_fingerprint=None,
        objective=experts[0].objective,
        model_args=ref.model_args,
        tokenizer=ref.tokenizer,
        tokenizer_fingerprint=ref.tokenizer_fingerprint,
        seed_model=ref.seed_model,
        seed_identity=root_seed_identity(ref),  # what the merged experts started from: it merges with them again
        run_name=run_name,
        data=data,
    )
    with atomic_dir(out) as tmp:
        save_consolidated(consolidated_path(tmp), state, args, extra={"expert": info.to_dict()})
        save_hf(state, args, hf_dir(tmp), tokenizer_dir=ref.tokenizer)
        write_expert_info(tmp, info)
        write_output_record(tmp, merge_owner(experts), is_dir=True)
    log.info(f"merged {len(experts)} experts ({method} weights) -> {out}")
    return {"consolidated": consolidated_path(out), "hf": hf_dir(out), "expert": out / EXPERT_JSON}


def run_merge(cfg: MergeConfig) -> tuple[list, list[float], str, dict]:
    """`merge_experts` end to end: select and check the experts, check every input and the output before any
    scoring, resolve the weights, write the merged model. Returns (experts, weights, method, written paths)."""
    experts = select_experts(find_experts(cfg.experts_dir), cfg.experts)
    check_mergeable(experts)
    parse_weights(cfg.weights, len(experts))  # a bad --weights fails before any scoring
    # not inside --experts-dir either: the next find_experts there would take the merge for an expert
    check_output_dir(
        cfg.output_dir,
        experts,
        {"--experts-dir": cfg.experts_dir, "--data-dir": cfg.data_dir, "--job-dir": cfg.job_dir},
    )
    if cfg.job_dir is not None:
        refuse_overlap(
            {"--job-dir": cfg.job_dir},
            {"--data-dir": cfg.data_dir, **{f"expert {e.run_dir}": e.run_dir for e in experts}},
        )
    weights, method = resolve_weights(
        cfg.weights,
        experts,
        data_dir=cfg.data_dir,
        subset=cfg.data_subset,
        max_docs=cfg.max_docs,
        job_dir=cfg.job_dir,
        device=cfg.device,
        batch_tokens=cfg.batch_tokens,
    )
    return experts, weights, method, merge_experts(experts, weights, cfg.output_dir, method=method)
