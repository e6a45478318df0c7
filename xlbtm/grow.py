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
import shutil
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlbtm.cli import get_logger
from xlbtm.cluster import typology
from xlbtm.cluster.artifact import load_clusterer
from xlbtm.cluster.extend import check_new_langs, extend_clusterer, lineage
from xlbtm.corpus import Corpus
from xlbtm.ensemble.consolidate import consolidate_expert
from xlbtm.ensemble.experts import find_experts, match_experts
from xlbtm.ensemble.merge import (
    average_states,
    check_mergeable,
    check_one_seed,
    posterior_weights,
    root_seed,
    root_seed_identity,
)
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.checkpoints import latest_checkpoint
from xlbtm.formats.clusterer import read_meta
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
from xlbtm.formats.layout import CONSOLIDATED, RunLayout, consolidated_path
from xlbtm.io import (
    atomic_dir,
    check_replaceable,
    output_owner,
    output_record_path,
    read_json,
    refuse_overlap,
    write_output_record,
)
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


def plan_init(req: AddExpertsRequest, experts, old, extended, lang: str, root_seed_model: str) -> tuple[dict, Any]:
    """(the `init` record of the new expert's expert.json, its parent Expert or None), decided without writing
    anything: the seed file itself is made by `materialize_init` once everything is validated."""
    method, which = parse_init(req.init, old.num_clusters)
    init: dict[str, Any] = {"method": method, "lang": lang, "root_seed_model": root_seed_model}
    if (identity := root_seed_identity(experts[0].meta)) is not None:  # a parent's weights are not the root
        init["root_seed_identity"] = identity
    if method == "seed":
        return {**init, "parent": None}, None
    if method == "average":
        return {**init, "parent": [str(e.run_dir) for e in experts]}, None
    if method == "nearest":
        which, dist = nearest_cluster(old, extended, lang)
        init["distance"] = dist
    assert which is not None  # expert:K names it; nearest computed it
    parent = experts[which]
    return {**init, "parent": str(parent.run_dir), "parent_cluster": which}, parent


def check_has_weights(experts) -> None:
    """The experts a new one starts from have weights (consolidated.pt or a finished checkpoint), said in
    add_experts' terms before anything is written (an expert whose cluster got no documents never trained)."""
    for e in experts:
        if e.weights is None and not consolidated_path(e.run_dir).is_file() and latest_checkpoint(e.run_dir) is None:
            raise InputError(
                "this expert has neither consolidated.pt nor a finished checkpoint (checkpoints/latest) to grow "
                "from; finish its training first, or choose another --init",
                e.run_dir,
            )


def planned_seed(init: dict, parent, work: Path) -> str:
    """The --seed-model `materialize_init` will hand the trainer (for the plan, before it is written)."""
    if init["method"] == "seed":
        return init["root_seed_model"]
    if init["method"] == "average":
        return str(work / "init" / init["lang"] / CONSOLIDATED)
    src = parent.source()
    return str(src if src.is_file() else parent.run_dir / CONSOLIDATED)


def materialize_init(req: AddExpertsRequest, experts, init: dict, parent, work: Path) -> tuple[str, dict]:
    """(the --seed-model of the new expert, its `init` record): consolidates the parent when it has only its
    DCP checkpoint, or averages the experts (`--init average`) into `work`."""
    if init["method"] == "seed":
        return init["root_seed_model"], init
    if init["method"] == "average":
        path, weights = _average_seed(experts, req, init["lang"], work / "init" / init["lang"] / CONSOLIDATED)
        return str(path), {**init, "weights": weights}
    return str(_seed_file(parent)), init


def _check_not_grown_otherwise(run_dir: Path, method: str, parent) -> None:
    """A rerun resumes the new expert; one with another --init would silently resume the first one instead."""
    if not (run_dir / EXPERT_JSON).is_file():
        return
    had = read_expert_info(run_dir).init or {}
    if had.get("method") != method or had.get("parent") != parent:
        raise UsageError(
            f"{run_dir} was already grown with --init {had.get('method')} (parent "
            f"{had.get('parent')}); to compare inits, grow a copy of --experts-dir"
        )


def _owner(paths: dict[str, Any], values: dict[str, str] | None = None) -> dict:
    """add_experts' ownership record (`xlbtm.io.output_owner`): the input paths, plus inputs that are no paths
    (the languages, the extended clusterer), compared as given."""
    owner = output_owner("add_experts", paths)
    owner["inputs"].update(values or {})
    return owner


def _extends(path: Path, old, langs: list[str]) -> bool:
    """An extended clusterer written before ownership records: old's extension by the same languages."""
    try:
        extends = read_meta(path).get("extends") or {}
    except InputError:
        return False
    return extends.get("fingerprint") == old.fingerprint and list(extends.get("langs") or []) == langs


def _earlier_assignment(work: Path, fingerprint: str, data: dict[str, Any]) -> bool:
    """A grown/ work dir written before ownership records: its cluster files are this extension's of the same
    data (the manifests record both)."""
    found = []
    for sub, flag in (("clusters", "--path-to-data"), ("pair_clusters", "--parallel-data")):
        if (work / sub / MANIFEST).is_file():
            m = read_json(work / sub / MANIFEST)
            want = None if data.get(flag) is None else str(Path(data[flag]).resolve())
            found.append(isinstance(m, dict) and m.get("fingerprint") == fingerprint and m.get("data_dir") == want)
    return bool(found) and all(found)


def _earlier_expert(run_dir: Path, fingerprint: str, cluster: int, lang: str) -> bool:
    """A new expert's run dir written before ownership records: its expert.json says it is the grown expert of
    `lang`, cluster `cluster` of this extension."""
    if not (run_dir / EXPERT_JSON).is_file():
        return False
    info = read_expert_info(run_dir)
    return (
        bool(info.init)
        and info.init.get("lang") == lang
        and info.cluster == cluster
        and info.clusterer_fingerprint == fingerprint
    )


def check_experts_home(experts_dir: Path, experts) -> None:
    """New experts go beside the old ones: an --experts-dir above their dir (the serialization dir holding
    `<K>_clusters`) would put them, and the work dir, elsewhere."""
    homes = {e.run_dir.parent.resolve() for e in experts}
    if len(homes) == 1 and (home := homes.pop()) != experts_dir.resolve():
        raise UsageError(
            f"--experts-dir {experts_dir} holds its experts in {home}; the new experts go beside them: "
            f"give --experts-dir {home}"
        )


def _corpus_inputs(corpus: Corpus, splits: list[str]) -> dict:
    return {s: [[corpus.rel(f), f.stat().st_size, f.stat().st_mtime_ns] for f in corpus.files(s)] for s in splits}


def current_assignment(
    out_dir: Path, data_dir, clusterer, splits: list[str], parallel_side: str | None = None
) -> dict[str, list[int]] | None:
    """{split: docs per cluster} of the cluster files in `out_dir` when this clusterer made them from these
    corpus files (same paths, sizes, mtimes), else None. Reads only."""
    if not (out_dir / MANIFEST).is_file():
        return None
    m = read_manifest(out_dir)
    if (
        m["fingerprint"] == clusterer.fingerprint
        and m.get("inputs") == _corpus_inputs(Corpus(data_dir), splits)
        and m.get("parallel_side") == parallel_side
    ):
        return {s: m["splits"][s]["documents"] for s in splits}
    return None


def assign_by_language(
    data_dir,
    lang_to_cluster: dict[str, int],
    out_dir: Path,
    clusterer,
    splits: list[str],
    parallel_side: str | None = None,
    *,
    clusterer_path: Path | None = None,
) -> dict[str, list[int]]:
    """Cluster files giving each new language's documents its new cluster (a new expert trains on its
    language, X-ELM); documents of other languages get none (training drops them). {split: docs per cluster}.
    A rerun on the same corpus files keeps the files (so the binarized data is not redone). `parallel_side`:
    the data are translation pairs, each by that side's language (`xlbtm.corpus.reader.pair_as_document`).
    `clusterer_path`: where the manifest says the clusterer is (default: where it was loaded from)."""
    kept = current_assignment(out_dir, data_dir, clusterer, splits, parallel_side)
    if kept is not None:
        return kept
    corpus, K = Corpus(data_dir), clusterer.num_clusters
    inputs = _corpus_inputs(corpus, splits)
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
            "clusterer": str(clusterer_path or clusterer.path),
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


@dataclass
class _Assignment:
    """The cluster files of the new languages: `final` (in the work dir), staged in `staged` (a temporary dir)
    until everything is validated, or None when `final` already holds them (a rerun on the same files)."""

    final: Path
    staged: Path | None
    counts: dict[str, list[int]]

    @property
    def readable(self) -> Path:
        return self.staged or self.final


def _stage_assignment(
    data_dir, new_k: dict[str, int], final: Path, staged: Path, ext, output_clusterer: Path, side: str | None
) -> _Assignment:
    splits = ["train"] + (["valid"] if (Path(data_dir) / "valid").is_dir() else [])
    kept = current_assignment(final, data_dir, ext, splits, side)
    if kept is not None:
        return _Assignment(final, None, kept)
    counts = assign_by_language(data_dir, new_k, staged, ext, splits, side, clusterer_path=output_clusterer)
    return _Assignment(final, staged, counts)


def _publish_dir(src: Path, dest: Path, owner: dict | None = None) -> None:
    """Copy a directory computed in the temporary dir into place, whole or not at all (`atomic_dir`)."""
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if owner is not None:
            write_output_record(tmp, owner, is_dir=True)


@dataclass
class _NewExpert:
    lang: str
    cluster: int
    run_dir: Path
    owner: dict
    init: dict
    parent: Any  # the Expert it branches from (nearest, expert:K), else None
    plan: Any  # TrainExpertsPlan: validated before anything is written


@dataclass
class _Prepared:
    """Everything add_experts will do, validated, with nothing written outside a temporary dir."""

    experts: list
    ext: Any  # the extended clusterer, computed in the temporary dir
    output_clusterer: Path
    clusterer_owner: dict
    publish_clusterer: bool  # False: --output-clusterer already is this extension (a rerun)
    work: Path
    work_owner: dict
    mono: _Assignment | None
    pairs: _Assignment | None
    new: list[_NewExpert]


def _train_request(req: AddExpertsRequest, info0: ExpertInfo, K: int, k: int, objective: Objective, **what):
    """How the new expert of cluster k trains: the training flags as given, what to train decided here."""
    return dataclasses.replace(
        req.train,
        num_clusters=K,
        train_cluster=str(k),
        serialization_dir=str(Path(req.experts_dir).parent),
        experts_dir=str(req.experts_dir),
        tokenizer=info0.tokenizer,
        objective=objective,
        run_name=info0.run_name,
        model_size=None,
        allow_unassigned=True,
        output_flag="--experts-dir",
        tokenizer_flag="tokenizer",
        **what,
    )


def prepare(req: AddExpertsRequest, tmp: Path) -> _Prepared:
    """Check everything add_experts can refuse (the experts, --init, the languages and their documents or pairs,
    the training settings as `plan_experts` checks them, every output path) before anything is written: the
    extension and the language assignment are computed in `tmp`."""
    experts_dir = Path(req.experts_dir)
    layout = RunLayout(experts_dir)
    old = load_clusterer(req.path_to_clusterer)
    # the experts of the old clusterer (and its ancestors); experts grown from it before (a rerun) are not theirs
    known = lineage(old)
    found = [e for e in find_experts(experts_dir) if e.meta.clusterer_fingerprint in known]
    if not found:
        raise InputError(
            f"no expert here was trained on --path-to-clusterer {req.path_to_clusterer} (or a clusterer it "
            "extends); give the clusterer these experts were trained on",
            experts_dir,
        )
    experts = match_experts(
        found,
        num_clusters=old.num_clusters,
        clusterer_fingerprint=old.fingerprint,
        lineage=known,
        flags="--experts-dir",
        exclude_flag=None,
    )
    check_experts_home(experts_dir, experts)
    method, _ = parse_init(req.init, old.num_clusters)
    root = one_root_seed(experts, experts_dir)
    if req.max_docs_per_lang < 1:
        raise UsageError(f"--max-docs-per-lang must be >= 1, got {req.max_docs_per_lang}")
    if method == "average":  # (what posterior_weights would refuse only after the clusterer is written)
        check_mergeable(experts)
        if experts[0].objective != "clm":
            raise UsageError(
                f"--init average weighs the experts by their posterior (a causal LM's likelihood); these "
                f"experts are {experts[0].objective}: use --init nearest, seed or expert:K"
            )
    info0 = experts[0].meta
    objective, reads = grown_objective(req, info0)
    langs = check_new_langs(old, req.langs)

    out = Path(req.output_clusterer)
    refuse_overlap(
        {"--output-clusterer": out},
        {
            "--path-to-clusterer": old.path,
            "--path-to-data": req.path_to_data,
            "--parallel-data": req.parallel_data,
        },
    )
    # a TF-IDF extension is fitted on the data; a typological one depends on the languages only
    clusterer_owner = _owner(
        {"--path-to-clusterer": old.path, "--path-to-data": None if old.kind == "typological" else req.path_to_data},
        {"--langs": ",".join(langs)},
    )
    check_replaceable(out, "--output-clusterer", clusterer_owner, is_dir=True, legacy=lambda p: _extends(p, old, langs))
    ext = extend_clusterer(old, langs, tmp / "clusterer", data_dir=req.path_to_data, max_docs=req.max_docs_per_lang)
    try:
        publish = read_meta(out).get("fingerprint") != ext.fingerprint
    except InputError:
        publish = True

    K0, K = old.num_clusters, ext.num_clusters
    work = layout.grown_dir(ext.fingerprint)
    data = {
        "--path-to-data": req.path_to_data if "mono" in reads else None,
        "--parallel-data": req.parallel_data if "pairs" in reads else None,
    }
    work_owner = _owner(data)
    check_replaceable(
        work,
        "--experts-dir's work dir",
        work_owner,
        is_dir=True,
        legacy=lambda p: _earlier_assignment(p, ext.fingerprint, data),
    )
    new_k = {lang: K0 + i for i, lang in enumerate(langs)}
    mono = pairs = None
    if "mono" in reads:
        mono = _stage_assignment(req.path_to_data, new_k, work / "clusters", tmp / "clusters", ext, out, None)
        empty = [lang for lang in langs if mono.counts["train"][new_k[lang]] == 0]
        if empty:
            raise InputError(f"no training documents with lang {', '.join(empty)}", req.path_to_data)
    if "pairs" in reads:
        assert req.parallel_data is not None  # checked with the objective: pairs are read only when given
        pairs = _stage_assignment(
            req.parallel_data, new_k, work / "pair_clusters", tmp / "pair_clusters", ext, out, "tgt"
        )
        empty = [lang for lang in langs if pairs.counts["train"][new_k[lang]] == 0]
        if empty:
            raise InputError(f"no translation pairs with tgt_lang {', '.join(empty)}", req.parallel_data)

    new = []
    for lang, k in new_k.items():
        run_dir = layout.run_dir(info0.run_name, k)
        owner = _owner(data, {"--langs": lang, "extended clusterer": ext.fingerprint})
        check_replaceable(
            run_dir,
            f"--experts-dir's cluster {k}",
            owner,
            is_dir=True,
            legacy=lambda p, k=k, lang=lang: _earlier_expert(p, ext.fingerprint, k, lang),
        )
        init, parent = plan_init(req, experts, old, ext, lang, root)
        check_has_weights(experts if init["method"] == "average" else [parent] if parent is not None else [])
        _check_not_grown_otherwise(run_dir, init["method"], init["parent"])
        log.info(f"{lang}: cluster {k}, init {init['method']} from {init.get('parent') or root}")
        # the plan as train_experts checks it (settings, model fit, locks), the seed's architecture taken from
        # the experts while its file is still to be made (consolidated or averaged once all is checked)
        plan = plan_experts(
            _train_request(
                req,
                info0,
                K,
                k,
                objective,
                seed_model=planned_seed(init, parent, work),
                seed_model_args=None if parent is None and init["method"] == "seed" else info0.model_args,
                path_to_clusters_dir=None if mono is None else str(mono.readable),
                path_to_data=req.path_to_data if mono is not None else None,
                parallel_data=req.parallel_data if pairs is not None else None,
                path_to_parallel_clusters_dir=None if pairs is None else str(pairs.readable),
                binarized_dir=req.train.binarized_dir or str(RunLayout(work).data_bin),
                init=init,
            )
        )
        # (described with the cluster files where they will be, not where they are staged)
        plan.clusters_dir = None if mono is None else mono.final
        plan.parallel_clusters_dir = None if pairs is None else pairs.final
        new.append(_NewExpert(lang, k, run_dir, owner, init, parent, plan))
    return _Prepared(experts, ext, out, clusterer_owner, publish, work, work_owner, mono, pairs, new)


def add_experts(req: AddExpertsRequest) -> list[GrownExpert]:
    """Grow the ensemble (the module docstring). Everything is validated before the first write (`prepare`);
    `--dry-run` prints the plan and writes nothing anywhere (its computations live in a temporary dir)."""
    with tempfile.TemporaryDirectory(prefix="xlbtm-add-experts-") as tmp:
        prep = prepare(req, Path(tmp))
        if req.train.dry_run:
            for e in prep.new:
                for line in describe_plan(e.plan):
                    print(line)
            print(
                f"dry run: nothing written; would write the extended clusterer {prep.output_clusterer} "
                f"(K={prep.ext.num_clusters}{'' if prep.publish_clusterer else ', already there'}), the cluster "
                f"files under {prep.work}, and train " + ", ".join(f"{e.lang} into {e.run_dir}" for e in prep.new)
            )
            return []
        return _grow(req, prep)


def _grow(req: AddExpertsRequest, prep: _Prepared) -> list[GrownExpert]:
    out = prep.output_clusterer
    if prep.publish_clusterer:
        _publish_dir(prep.ext.path, out, prep.clusterer_owner)
    elif not output_record_path(out, is_dir=True).is_file():  # an extension written before records: claim it
        write_output_record(out, prep.clusterer_owner, is_dir=True)
    ext = load_clusterer(out)
    assert ext.fingerprint == prep.ext.fingerprint  # the same files, copied
    write_output_record(prep.work, prep.work_owner, is_dir=True)
    for a in (prep.mono, prep.pairs):
        if a is not None and a.staged is not None:
            _publish_dir(a.staged, a.final)
    grown = []
    for e in prep.new:
        write_output_record(e.run_dir, e.owner, is_dir=True)
        seed, init = materialize_init(req, prep.experts, e.init, e.parent, prep.work)
        plan = plan_experts(
            dataclasses.replace(
                e.plan.request,
                seed_model=seed,
                init=init,
                path_to_clusters_dir=None if prep.mono is None else str(prep.mono.final),
                path_to_parallel_clusters_dir=None if prep.pairs is None else str(prep.pairs.final),
            )
        )
        for line in describe_plan(plan):
            print(line)
        results = run_plan(plan)
        if results is None:  # --no-wait
            continue
        for line in describe_results(plan, results):
            print(line)
        if not all_completed(results):
            raise InputError(
                f"the {e.lang} expert did not finish; rerun the same command to resume it", plan.experts[0].run_dir
            )
        grown.append(GrownExpert(e.lang, e.cluster, init, plan.experts[0].run_dir))
    return grown
