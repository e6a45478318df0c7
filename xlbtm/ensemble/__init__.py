"""Ensembles of experts (pipeline steps 4-5): consolidation, routing, scoring, mixing, merging, reports.

    from xlbtm.ensemble.evaluate import EvalConfig, run_eval         # eval_ensemble end to end
    from xlbtm.ensemble.consolidate import consolidate                # DCP / metaseq shards -> consolidated.pt (+ hf/)
    from xlbtm.ensemble.routing import router_from_clusterer, log_weights
    from xlbtm.ensemble.mixing import mix, topk_renormalize, oracle, perplexity
    from xlbtm.ensemble.experts import find_experts, read_expert, match_experts
    from xlbtm.ensemble.scoring import prepare_docs, score_expert, compute_routing
    from xlbtm.ensemble.report import write_outputs, load_result
    from xlbtm.ensemble.merge import average_states, posterior_weights, merge_experts  # parameter averaging

Submodules import their heavy dependencies (torch, matplotlib) lazily; importing this package is free.
"""
