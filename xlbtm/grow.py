"""Grow an ensemble with experts for new languages (X-ELM's hierarchical multi-round training, HMR).

    grown = add_experts(AddExpertsRequest(experts_dir=..., path_to_clusterer=..., langs=["pl", "cs"],
                                          path_to_data=..., output_clusterer=..., init="nearest", train=req))

1. The clusterer is extended with one new cluster per language (`xlbtm.cluster.extend`): clusters 0..K-1 are
   the old ones, K.. the new languages in the order given.
2. Each new expert starts from
     nearest    the existing expert closest to the language: typological clusterers by URIEL distance to the
                cluster's nearest language (single linkage, the distance X-ELM's clustering uses), TF-IDF ones
                by the distance between the language's new centroid and the old centroids (X-ELM);
     average    the parameter average of all experts weighted by their posterior on a sample of the
                language's documents (BTM; `xlbtm.ensemble.merge`);
     seed       the seed the experts were branched from;
     expert:K   expert K.
3. It trains on the language's documents (of --path-to-data, by their `lang`) through the normal training path (`xlbtm.train`: local or SLURM,
   resumable: rerunning the command continues), into the same experts dir, and its expert.json records
   `init` (method, parent, weights, distance). With the experts' objective (or --objective) tlm / mlm+tlm it
   trains on the pairs of --parallel-data that translate into the language (by `tgt_lang`) too.
`eval_ensemble --experts-dir <experts> --path-to-clusterer <extended>` then evaluates old and new experts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlbtm.cli import get_logger
from xlbtm.cluster import typology
from xlbtm.cluster.artifact import load_clusterer
from xlbtm.cluster.extend import extend_clusterer, lineage
from xlbtm.corpus import Corpus
from xlbtm.ensemble.consolidate import consolidate_expert
from xlbtm.ensemble.experts import find_experts, match_experts
from xlbtm.ensemble.merge import average_states, check_one_seed, posterior_weights, root_seed, root_seed_identity
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.clusters import (
    FORMAT,
    MANIFEST,
    cluster_file_path,
    read_manifest,
    write_cluster_file,
    write_manifest,
)
from xlbtm.formats.consolidated import save_consolidated
from xlbtm.formats.expert import EXPERT_JSON, ExpertInfo, read_expert_info
from xlbtm.formats.layout import CONSOLIDATED, RunLayout
from xlbtm.models import ModelArgs
from xlbtm.train.config import OBJECTIVES, AddExpertsRequest, Objective, uses_monolingual, uses_pairs
from xlbtm.train.experts import all_completed, describe_results, run_plan
from xlbtm.train.plan import describe_plan, plan_experts

log = get_logger("add_experts")

INITS = ("nearest", "average", "seed", "expert:K")


@dataclass
class GrownExpert:
    lang: str
    cluster: int
    init: dict
    run_dir: Path


def parse_init(value: str, num_clusters: int) -> tuple[str, int | None]:
    if value in ("nearest", "average", "seed"):
        return value, None
    if value.startswith("expert:") and value[7:].isdigit() and int(value[7:]) < num_clusters:
        return "expert", int(value[7:])
    raise UsageError(f"--init must be nearest, average, seed or expert:K with K < {num_clusters}, got {value!r}")


def nearest_cluster(old, extended, lang: str) -> tuple[int, float]:
    """(cluster of `old` closest to `lang`, its distance); see the module docstring."""
    K = old.num_clusters
    if old.kind == "typological":
        langs = list(old.lang_to_cluster)
        feats, _ = typology.language_features(langs + [lang])
        d = typology.cosine_distances(feats)[-1, :-1]
        per = [min(d[i] for i, x in enumerate(langs) if old.lang_to_cluster[x] == k) for k in range(K)]
    else:
        new = extended.centroids[extended.meta["added_langs"][lang]]
        per = list(((old.centroids - new[None, :]) ** 2).sum(1))
    k = int(np.argmin(per))
    return k, float(per[k])


def _seed_file(expert) -> Path:
    """The expert's weights as a file `--seed-model` reads: consolidated.pt (consolidated first when the
    expert has only its DCP checkpoint, or the consolidated file is older than it)."""
    src = expert.source()
    if src.is_file():
        return src

    return consolidate_expert(expert.run_dir)["consolidated"]


def _average_seed(experts, req: AddExpertsRequest, lang: str, out: Path) -> tuple[Path, list[float]]:
    weights = posterior_weights(
        experts,
        req.path_to_data,
        req.train.train_subset,
        langs={lang},
        max_docs=req.max_docs_per_lang,
        job_dir=out.parent / "posterior",
    )
    args = ModelArgs.from_dict(experts[0].meta.model_args)
    save_consolidated(
        out,
        average_states(experts, weights),
        args,
        extra={"merged_from": [str(e.run_dir) for e in experts], "weights": weights},
    )
    return out, weights


def one_root_seed(experts, where) -> str:
    check_one_seed(experts, "grow the ensemble")  # the initial weights, not only the seed's name
    seeds = {root_seed(e.meta) for e in experts}
    if len(seeds) != 1:
        raise InputError(
            f"the experts were branched from different seeds ({', '.join(sorted(seeds))}); growing "
            "needs one ensemble from one seed",
            where,
        )
    return seeds.pop()


def choose_init(req: AddExpertsRequest, experts, old, extended, lang: str, work: Path) -> tuple[str, dict]:
    """(the --seed-model of the new expert, the `init` record of its expert.json)."""
    method, which = parse_init(req.init, old.num_clusters)
    init: dict[str, Any] = {"method": method, "lang": lang, "root_seed_model": one_root_seed(experts, req.experts_dir)}
    if (identity := root_seed_identity(experts[0].meta)) is not None:  # a parent's weights are not the root
        init["root_seed_identity"] = identity
    if method == "seed":
        return init["root_seed_model"], {**init, "parent": None}
    if method == "average":
        path, weights = _average_seed(experts, req, lang, work / "init" / lang / CONSOLIDATED)
        return str(path), {**init, "parent": [str(e.run_dir) for e in experts], "weights": weights}
    if method == "nearest":
        which, dist = nearest_cluster(old, extended, lang)
        init["distance"] = dist
    parent = experts[which]
    return str(_seed_file(parent)), {**init, "parent": str(parent.run_dir), "parent_cluster": which}


def _check_not_grown_otherwise(run_dir: Path, method: str, parent=...) -> None:
    """A rerun resumes the new expert; one with another --init would silently resume the first one instead."""
    if not (run_dir / EXPERT_JSON).is_file():
        return
    had = read_expert_info(run_dir).init
    if had.get("method") != method or (parent is not ... and had.get("parent") != parent):
        raise UsageError(
            f"{run_dir} was already grown with --init {had.get('method')} (parent "
            f"{had.get('parent')}); to compare inits, grow a copy of --experts-dir"
        )


def assign_by_language(
    data_dir,
    lang_to_cluster: dict[str, int],
    out_dir: Path,
    clusterer,
    splits: list[str],
    parallel_side: str | None = None,
) -> dict[str, list[int]]:
    """Cluster files giving each new language's documents its new cluster (a new expert trains on its
    language, X-ELM); documents of other languages get none (training drops them). {split: docs per cluster}.
    A rerun on the same corpus files keeps the files (so the binarized data is not redone). `parallel_side`:
    the data are translation pairs, each by that side's language (`xlbtm.corpus.reader.pair_as_document`)."""
    corpus, K = Corpus(data_dir), clusterer.num_clusters
    inputs = {s: [[corpus.rel(f), f.stat().st_size, f.stat().st_mtime_ns] for f in corpus.files(s)] for s in splits}
    if (out_dir / MANIFEST).is_file():
        m = read_manifest(out_dir)
        if (
            m["fingerprint"] == clusterer.fingerprint
            and m.get("inputs") == inputs
            and m.get("parallel_side") == parallel_side
        ):
            return {s: m["splits"][s]["documents"] for s in splits}
    counts = {}
    for split in splits:
        n = [0] * K
        for f in corpus.files(split):
            pairs = [
                (d.sp_id, lang_to_cluster[d.lang])
                for d in corpus.iter_file(f, parallel_side)
                if d.lang in lang_to_cluster
            ]
            for _, k in pairs:
                n[k] += 1
            write_cluster_file(cluster_file_path(out_dir, corpus.rel(f)), pairs)
        counts[split] = n
    write_manifest(
        out_dir,
        {
            "format": FORMAT,
            "fingerprint": clusterer.fingerprint,
            "num_clusters": K,
            "kind": "language",
            "clusterer": str(clusterer.path),
            "data_dir": str(Path(data_dir).resolve()),
            "inputs": inputs,
            **({"parallel_side": parallel_side} if parallel_side else {}),
            "documents": [sum(c[k] for c in counts.values()) for k in range(K)],
            "splits": {s: {"documents": c} for s, c in counts.items()},
        },
    )
    return counts


def grown_objective(req: AddExpertsRequest, info0: ExpertInfo) -> tuple[Objective, set[str]]:
    """(the new experts' objective, what it reads: "mono" and / or "pairs"): --objective, else the one the
    experts were trained with (expert.json's `objective` is how they are scored; tlm experts score as mlm)."""
    trained = ((info0.data or {}).get("config") or {}).get("objective") or info0.objective
    objective = req.objective or trained
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if OBJECTIVES[objective] != OBJECTIVES[trained]:
        raise UsageError(
            f"--objective {objective} trains a {OBJECTIVES[objective]} model, but the experts are "
            f"{OBJECTIVES[trained]} (trained with {trained})"
        )
    objective = typing.cast(Objective, objective)  # one of OBJECTIVES: checked above
    reads = ({"mono"} if uses_monolingual(objective) else set()) | ({"pairs"} if uses_pairs(objective) else set())
    if "pairs" in reads and not req.parallel_data:
        raise UsageError(
            f"the new experts train with --objective {objective}: give --parallel-data (translation "
            "pairs; those whose tgt_lang is a new language train its expert)"
        )
    if "pairs" not in reads and req.parallel_data:
        raise UsageError(f"--parallel-data is only read by --objective tlm or mlm+tlm, not {objective}")
    return objective, reads


def add_experts(req: AddExpertsRequest) -> list[GrownExpert]:
    experts_dir = Path(req.experts_dir)
    layout = RunLayout(experts_dir)
    old = load_clusterer(req.path_to_clusterer)
    # the experts of the old clusterer (and its ancestors); experts grown from it before (a rerun) are not theirs
    known = lineage(old)
    experts = match_experts(
        [e for e in find_experts(experts_dir) if e.meta.clusterer_fingerprint in known],
        num_clusters=old.num_clusters,
        clusterer_fingerprint=old.fingerprint,
        lineage=known,
    )
    # what can be refused is refused before anything is written
    parse_init(req.init, old.num_clusters)
    one_root_seed(experts, experts_dir)
    ext = extend_clusterer(
        old, req.langs, req.output_clusterer, data_dir=req.path_to_data, max_docs=req.max_docs_per_lang
    )
    K0, K = old.num_clusters, ext.num_clusters
    new_langs = list(ext.meta["extends"]["langs"])
    work = layout.grown_dir(ext.fingerprint)
    clusters = work / "clusters"
    splits = ["train"] + (["valid"] if (Path(req.path_to_data) / "valid").is_dir() else [])
    info0 = experts[0].meta
    objective, reads = grown_objective(req, info0)
    new_k = {lang: K0 + i for i, lang in enumerate(new_langs)}
    if "mono" in reads:
        counts = assign_by_language(req.path_to_data, new_k, clusters, ext, splits)
        empty = [lang for lang in new_langs if counts["train"][new_k[lang]] == 0]
        if empty:
            raise InputError(f"no training documents with lang {', '.join(empty)}", req.path_to_data)
    pair_clusters = None
    if "pairs" in reads:
        pair_clusters = work / "pair_clusters"
        assert req.parallel_data is not None  # checked with the objective: pairs are read only when given
        psplits = ["train"] + (["valid"] if (Path(req.parallel_data) / "valid").is_dir() else [])
        counts = assign_by_language(req.parallel_data, new_k, pair_clusters, ext, psplits, parallel_side="tgt")
        empty = [lang for lang in new_langs if counts["train"][new_k[lang]] == 0]
        if empty:
            raise InputError(f"no translation pairs with tgt_lang {', '.join(empty)}", req.parallel_data)
    grown = []
    for i, lang in enumerate(new_langs):
        k = K0 + i
        _check_not_grown_otherwise(layout.run_dir(info0.run_name, k), parse_init(req.init, K0)[0])
        seed, init = choose_init(req, experts, old, ext, lang, work)
        _check_not_grown_otherwise(layout.run_dir(info0.run_name, k), init["method"], init.get("parent"))
        log.info(f"{lang}: cluster {k}, init {init['method']} from {init.get('parent') or seed}")
        treq = dataclasses.replace(
            req.train,
            seed_model=seed,
            num_clusters=K,
            train_cluster=str(k),
            path_to_clusters_dir=str(clusters) if "mono" in reads else None,
            path_to_data=req.path_to_data if "mono" in reads else None,
            parallel_data=req.parallel_data if "pairs" in reads else None,
            path_to_parallel_clusters_dir=None if pair_clusters is None else str(pair_clusters),
            serialization_dir=str(experts_dir.parent),
            experts_dir=str(experts_dir),
            tokenizer=info0.tokenizer,
            objective=objective,
            run_name=info0.run_name,
            init=init,
            binarized_dir=req.train.binarized_dir or str(RunLayout(work).data_bin),
            model_size=None,
            allow_unassigned=True,
        )
        plan = plan_experts(treq)
        for line in describe_plan(plan):
            print(line)
        if treq.dry_run:
            print("dry run: the clusterer is extended and the corpus assigned; nothing trained")
            continue
        results = run_plan(plan)
        if results is None:  # --dry-run / --no-wait
            continue
        for line in describe_results(plan, results):
            print(line)
        if not all_completed(results):
            raise InputError(
                f"the {lang} expert did not finish; rerun the same command to resume it", plan.experts[0].run_dir
            )
        grown.append(GrownExpert(lang, k, init, plan.experts[0].run_dir))
    return grown
