"""eval_ensemble end to end: resolve experts, score (once per expert, cached), route, mix, report.

    cfg = EvalConfig(data_dir=..., data_subset="valid", job_dir=..., experts_dir=..., path_to_clusterer=...)
    result = run_eval(cfg)          # also writes result.json, report.md, ppl_by_language.png into job_dir
                                    # (an earlier run's of other settings are kept beside them: ensemble.report)

Ensemble types:
  clustering  per-token weights softmax(-||h_j - c_k||^2 / T) from the prefix (optional top-k)
  uniform     every expert 1/K
  lang        hard routing of the whole document by its `lang` through a typological clusterer
  oracle      the best single expert per document (an upper bound on document-level routing)
  dense       one model (K = 1)
  average     one model whose parameters are the uniform average of the experts' (c-BTM's --average; the
              same code as merge_experts --weights uniform, xlbtm.ensemble.merge)

`exclude_experts` (--exclude-experts 2,5) switches experts off (data opt-out): they are neither loaded nor
scored, and every mixture is over the remaining experts with its weights renormalized (clustering: the prefix
posterior over the remaining centroids; lang: documents of an excluded language get the uniform mixture of the
remaining experts).

`parallel_data` (--parallel-data DIR) adds cross-lingual retrieval for encoder (masked-LM) experts: accuracy@1
per language of tgt -> src nearest-neighbour search on mean-pooled sentence vectors, the ensemble's vector mixed
by the same routing weights (xlbtm.ensemble.retrieval), reported as result.json's `retrieval`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from xlbtm.cli import get_logger
from xlbtm.cluster.artifact import load_clusterer
from xlbtm.corpus import Corpus
from xlbtm.ensemble import mixing, routing
from xlbtm.ensemble.config import EvalConfig
from xlbtm.ensemble.experts import read_expert, resolve_ensemble, training_budget
from xlbtm.ensemble.merge import average_states
from xlbtm.ensemble.mixing import perplexity
from xlbtm.ensemble.report import load_result, side_budget, write_outputs
from xlbtm.ensemble.retrieval import evaluate_retrieval, load_parallel
from xlbtm.ensemble.routing import hard_log_weights, router_from_clusterer
from xlbtm.ensemble.scoring import MLM_GROUPS, compute_routing, prepare_docs, read_scores, score_expert, scoring_window
from xlbtm.errors import UsageError
from xlbtm.io import refuse_overlap, sha256_json
from xlbtm.launch import make_executor, wait_for

log = get_logger("ensemble")


def resolve(cfg: EvalConfig):
    """(experts ordered by cluster, the excluded ones left out; clusterer or None; tokenizer)."""
    clusterer = _load_clusterer(cfg.path_to_clusterer) if cfg.path_to_clusterer else None
    return resolve_ensemble(
        cfg.ensemble_type,
        experts_dir=cfg.experts_dir,
        model_paths=cfg.model_paths,
        clusterer=clusterer,
        clusterer_path=cfg.path_to_clusterer,
        exclude=cfg.exclude_experts,
    )


def _load_clusterer(path):
    return load_clusterer(path)


def score_all(cfg: EvalConfig, experts, docs, window: int | None = None, stride: int | None = None) -> list[str]:
    """Score each model once; returns the cache names in expert order. `window` / `stride`: CLM scoring
    windows (`scoring_window`)."""
    if cfg.ensemble_type == "average":
        key = sha256_json({"average": [e.fingerprint() for e in experts]})
        score_expert(
            cfg.job_dir,
            "average",
            experts[0],
            docs,
            state=average_states(experts),
            device=cfg.device,
            batch_tokens=cfg.batch_tokens,
            weights_key=key,
            window=window,
            stride=stride,
        )
        return ["average"]
    names = ["dense" if cfg.ensemble_type == "dense" else f"expert{e.cluster}" for e in experts]
    if cfg.run is None:
        for name, e in zip(names, experts):
            score_expert(
                cfg.job_dir,
                name,
                e,
                docs,
                device=cfg.device,
                batch_tokens=cfg.batch_tokens,
                window=window,
                stride=stride,
            )
        return names

    ex = make_executor(
        cfg.run,
        Path(cfg.job_dir) / "jobs",
        name="score_expert",
        gpus_per_node=cfg.gpus_per_node,
        cpus_per_task=1,
        timeout_min=240,
        array_parallelism=len(experts),
        site=cfg.site,
    )
    jobs = [
        ex.submit(_score_job, cfg.job_dir, name, str(e.weights or e.run_dir), cfg.batch_tokens, window, stride)
        for name, e in zip(names, experts)
    ]
    wait_for(jobs, what="expert scoring")
    return names


def _score_job(
    job_dir: str, name: str, expert_path: str, batch_tokens: int, window: int | None = None, stride: int | None = None
) -> str:
    """One scoring job (local process or SLURM array element); reads the shared docs from the job dir."""
    return str(
        score_expert(job_dir, name, read_expert(expert_path), batch_tokens=batch_tokens, window=window, stride=stride)
    )


def run_eval(cfg: EvalConfig) -> dict:
    refuse_overlap(
        {"--job-dir": cfg.job_dir},
        {
            "--data-dir": cfg.data_dir,
            "--path-to-clusterer": cfg.path_to_clusterer,
            "--experts-dir": cfg.experts_dir,
            "--dense-result": cfg.dense_result,
            "--parallel-data": cfg.parallel_data,
            **{f"--model-paths {m}": m for m in cfg.model_paths},
        },
    )
    experts, clusterer, tokenizer = resolve(cfg)
    objective = experts[0].objective
    # CLM reads whole documents in windows (scoring_window); MLM reads one window of the same context the
    # experts trained with (positions past it are untrained), <s> takes a position
    trained = scoring_window(experts, cfg.context_window)[0]
    max_tokens = None if objective == "clm" else trained - 1
    pairs = None
    if cfg.parallel_data is not None:
        # before any scoring: a causal ensemble or a bad pair line stops the run while nothing is spent
        pairs = _load_pairs(cfg, objective, tokenizer, trained)
    Path(cfg.job_dir).mkdir(parents=True, exist_ok=True)
    docs = prepare_docs(
        cfg.job_dir, cfg.data_dir, cfg.data_subset, tokenizer, max_tokens, cfg.max_valid_steps, cfg.skip_bad_lines
    )
    log.info(f"{docs.num_docs} documents, {len(docs.tokens)} tokens; {len(experts)} expert(s), {objective}")
    window, stride = scoring_window(experts, cfg.context_window, cfg.stride) if objective == "clm" else (None, None)
    names = score_all(cfg, experts, docs, window, stride)
    logp = torch.from_numpy(np.stack([read_scores(cfg.job_dir, n) for n in names]).astype(np.float64))
    K, N = logp.shape
    # the cluster id of each row of logp: with --exclude-experts, row k is no longer cluster k (one model
    # -- dense, average -- is row 0, as always)
    clusters = list(range(K)) if cfg.ensemble_type in ("dense", "average") else [e.cluster for e in experts]
    lengths = np.diff(docs.offsets)
    doc_of_token = torch.from_numpy(np.repeat(np.arange(docs.num_docs), lengths))

    route = None
    doc_cluster = None
    if clusterer is not None and cfg.ensemble_type == "clustering":
        route = compute_routing(cfg.job_dir, clusterer, docs, tokenizer)
        doc_cluster = route["doc_sqdist"].argmin(1)
        if objective == "mlm":  # MLM experts see the unmasked document: one posterior per document
            route["token_sqdist"] = np.repeat(route["doc_sqdist"], lengths, axis=0)
            route["token_empty"] = np.repeat(route["doc_empty"], lengths)
    token_sqdist = None
    if route is not None:
        # the posterior over the remaining centroids only: dropping the excluded columns before the softmax
        # renormalizes it (and top-k picks among the remaining); the cache keeps all K columns
        token_sqdist = route["token_sqdist"][:, clusters] if cfg.exclude_experts else route["token_sqdist"]
    elif clusterer is not None and cfg.ensemble_type != "dense":
        doc_cluster = _predict_docs(clusterer, cfg, docs)

    if any(k > K for k in cfg.topks) and cfg.ensemble_type == "clustering":
        log.info(f"--topk above the {K} experts keeps every expert (as -1)")
    oracle_lp = oracle_top = None
    if K > 1:  # the best single expert per document: the ceiling of document-level routing, for every mixture
        _, best = mixing.oracle(logp, docs.offsets)
        oracle_top = best[doc_of_token]
        oracle_lp = logp.gather(0, oracle_top.view(1, -1))[0]
    sweep = []
    settings_list = (
        [(t, k) for t in cfg.temperatures for k in cfg.topks] if cfg.ensemble_type == "clustering" else [(None, -1)]
    )
    for temperature, topk in settings_list:
        top = None
        if K == 1:
            mixed = logp[0]
            top = torch.zeros(N, dtype=torch.long)
        elif cfg.ensemble_type == "clustering":
            # (clustering with K > 1 was routed above; its settings all have a temperature)
            assert route is not None and token_sqdist is not None and temperature is not None
            log_w = routing.log_weights(
                torch.from_numpy(token_sqdist),
                temperature,
                topk=topk,
                cbtm_compat=cfg.cbtm_compat,
                empty=torch.from_numpy(route["token_empty"]),
            )
            mixed = mixing.mix(logp, log_w)
            top = log_w.argmax(0)
        elif cfg.ensemble_type == "uniform":
            mixed = mixing.mix(logp, mixing.uniform_log_weights(K, N))
        elif cfg.ensemble_type == "lang":
            assert doc_cluster is not None  # predicted above
            log_w, top = hard_log_weights(doc_cluster, clusters, doc_of_token)
            mixed = mixing.mix(logp, log_w)
        elif cfg.ensemble_type == "oracle":
            assert oracle_lp is not None  # computed above for K > 1
            mixed, top = oracle_lp, oracle_top
        else:
            raise AssertionError(cfg.ensemble_type)
        sweep.append(_summarize(mixed.numpy(), docs, doc_cluster, top, clusters, temperature, topk))

    retrieval = None
    if pairs is not None:
        retrieval, per_setting = evaluate_retrieval(cfg, experts, clusterer, tokenizer, pairs, settings_list)
        for s, r in zip(sweep, per_setting):
            s["retrieval"] = r["accuracy"]
    first = sweep[0]
    oracle = None
    if K > 1:
        assert oracle_lp is not None  # computed above for K > 1
        o = _summarize(oracle_lp.numpy(), docs, doc_cluster, oracle_top, clusters, None, -1)
        oracle = {"result_ppl": o["result_ppl"], "per_language": o["per_language"]}
    result = {
        "dataset": cfg.data_subset,
        "ensemble_type": cfg.ensemble_type,
        "result_ppl": first["result_ppl"],
        "tokens": int(N),
        "documents": int(docs.num_docs),
        "per_language": first["per_language"],
        "per_cluster": first["per_cluster"],
        "top_expert": first["top_expert"],
        "oracle": oracle,
        "settings": {
            "temperature": first["temperature"],
            "topk": first["topk"],
            "cbtm_compat": cfg.cbtm_compat,
            "num_experts": K,
            "excluded_experts": sorted(set(cfg.exclude_experts)),
            "objective": objective,
            "max_tokens": max_tokens,
            "context_window": window,
            "stride": stride,
            "max_valid_steps": cfg.max_valid_steps,
            "data_dir": str(cfg.data_dir),
            "clusterer": cfg.path_to_clusterer,
            "clusterer_fingerprint": getattr(clusterer, "fingerprint", None),
            "experts": [str(e.weights or e.run_dir) for e in experts],
            "routing": ("incremental" if route is not None else None),
            "mlm_groups": None if objective == "clm" else MLM_GROUPS,
            # what each model trained (steps, tokens), so a report -- this one, or one that takes this result
            # as its --dense-result -- can state both sides' budgets
            "budget": side_budget([training_budget(e) for e in experts]),
            "dense_result": None if cfg.dense_result is None else str(cfg.dense_result),
        },
        "sweep": [
            {k: v for k, v in s.items() if k in ("temperature", "topk", "result_ppl", "per_language", "retrieval")}
            for s in sweep
        ],
    }
    if retrieval is not None:  # (only then: results without --parallel-data keep their keys)
        result["retrieval"] = retrieval
    dense = load_result(cfg.dense_result) if cfg.dense_result else None
    paths = write_outputs(cfg.job_dir, result, dense)
    log.info(f"{cfg.ensemble_type}: ppl {result['result_ppl']:.3f} over {N} tokens -> {paths['result']}")
    for s in sweep[1:]:
        log.info(f"  T={s['temperature']} topk={s['topk']}: ppl {s['result_ppl']:.3f}")
    return result


def _load_pairs(cfg: EvalConfig, objective: str, tokenizer, context: int):
    """The tokenized --parallel-data pairs (xlbtm.ensemble.retrieval), refusing causal experts."""
    if objective != "mlm":
        raise UsageError(
            f"--parallel-data: cross-lingual retrieval reads encoder (masked-LM) experts' "
            f"bidirectional states; these experts are {objective} (causal) models"
        )
    # one sentence is `<s> text </s>`: two of the positions are the specials
    return load_parallel(
        cfg.parallel_data,
        cfg.parallel_subset,
        tokenizer,
        context - 2,
        max_pairs=cfg.retrieval_max_pairs,
        skip_bad_lines=cfg.skip_bad_lines,
    )


def _predict_docs(clusterer, cfg: EvalConfig, docs) -> np.ndarray:
    """The clusterer's hard assignment of every eval document: nearest centroid of the whole document (the
    same featurization routing uses), or `predict` for clusterers without centroids (typological: `lang`)."""
    if getattr(clusterer, "kind", None) != "typological":
        try:
            router = router_from_clusterer(clusterer)
        except ValueError:
            router = None
        if router is not None:
            return np.asarray(
                [router.document_distances(docs.doc(d))[0].argmin() for d in range(docs.num_docs)], dtype=np.int64
            )

    corpus = Corpus(cfg.data_dir, skip_bad_lines=cfg.skip_bad_lines)
    full = [corpus.get(s) for s in docs.sp_ids]
    return np.asarray(clusterer.predict(full), dtype=np.int64)


def _summarize(mixed: np.ndarray, docs, doc_cluster, top, clusters: list[int], temperature, topk) -> dict:
    """`top`: per token the row of the expert that carried the most weight (-1: none did), reported under
    that expert's cluster id (`clusters[row]`)."""
    lengths = np.diff(docs.offsets)
    doc_lp = np.add.reduceat(mixed, docs.offsets[:-1]) if len(mixed) else np.zeros(0)

    def group(keys, languages: bool = False) -> dict:
        out: dict = {}
        for key in sorted(set(keys), key=str):
            sel = np.asarray([k == key for k in keys])
            out[str(key)] = {
                "ppl": perplexity(doc_lp[sel].sum(), int(lengths[sel].sum())),
                "tokens": int(lengths[sel].sum()),
                "documents": int(sel.sum()),
            }
            if languages:  # what a cluster is, in the reader's terms: its documents per language, most first
                counts = Counter(lang for lang, s in zip(docs.langs, sel) if s)
                out[str(key)]["languages"] = dict(sorted(counts.items(), key=lambda lc: (-lc[1], lc[0])))
        return out

    top_share = None
    if top is not None:
        t = top.numpy()
        counts = np.bincount(t[t >= 0], minlength=len(clusters))
        top_share = {str(clusters[k]): float(c / max(len(mixed), 1)) for k, c in enumerate(counts)}
    return {
        "temperature": temperature,
        "topk": topk,
        "result_ppl": perplexity(float(mixed.sum()), len(mixed)),
        "per_language": group(list(docs.langs)),
        "per_cluster": group([int(c) for c in doc_cluster], languages=True) if doc_cluster is not None else {},
        "top_expert": top_share,
    }
