"""Finding, checking and loading the experts of an ensemble.

Experts are matched to clusters by their `expert.json` (contract 5), never by folder order: c-BTM zips sorted
folder names with cluster ids, which mis-pairs `cluster10` with cluster 2 at K >= 10.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from xlbtm.cli import get_logger
from xlbtm.cluster.extend import lineage
from xlbtm.data.dataset import corpus_tokens_per_sample
from xlbtm.ensemble.consolidate import clean_keys
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.checkpoints import LATEST, TRAIN_STATE, checkpoint_root, latest_checkpoint, read_train_state
from xlbtm.formats.consolidated import load_consolidated
from xlbtm.formats.expert import EXPERT_JSON, ExpertInfo, read_expert_info
from xlbtm.formats.layout import consolidated_path, list_experts, train_log_path
from xlbtm.io import sha256_json
from xlbtm.models import ModelArgs
from xlbtm.models.load import check_state_fits, model_from_state_dict
from xlbtm.parallel.checkpoint import read_model_state
from xlbtm.tokenizer import load_tokenizer

log = get_logger("ensemble")


@dataclass
class Expert:
    run_dir: Path  # the expert run dir (holds expert.json)
    meta: ExpertInfo  # expert.json
    weights: Path | None = None  # an explicit consolidated.pt, else the run dir's (or its latest DCP step)

    @property
    def info(self) -> dict:
        """expert.json as a plain dict (a copy; xlbtm itself reads the typed `meta`)."""
        return self.meta.to_dict()

    @property
    def cluster(self) -> int:
        return int(self.meta.cluster)

    @property
    def objective(self) -> str:
        return self.meta.objective

    @property
    def name(self) -> str:
        return self.meta.run_name or self.run_dir.name

    def source(self) -> Path:
        """The file/dir the weights come from: consolidated.pt when present, else the latest DCP checkpoint."""
        if self.weights is not None:
            return self.weights
        c = consolidated_path(self.run_dir)
        pointer = checkpoint_root(self.run_dir) / LATEST
        if c.is_file():
            # training went on after consolidating: score what it ended with, not the stale file
            if pointer.is_file() and pointer.stat().st_mtime_ns > c.stat().st_mtime_ns:
                ck = latest_checkpoint(self.run_dir)
                assert ck is not None  # the pointer is there (checked just above)
                if not getattr(self, "_warned_stale", False):
                    log.warning(f"{c} is older than {ck.name}; scoring {ck} (re-run consolidate to refresh it)")
                    self._warned_stale = True
                return ck
            return c
        ck = latest_checkpoint(self.run_dir)
        if ck is None:
            raise InputError(
                "expert has neither consolidated.pt nor a finished checkpoint (checkpoints/latest); did its "
                f"training run save? (if its cluster has no documents, leave it out: --exclude-experts {self.cluster})",
                self.run_dir,
            )
        return ck

    def fingerprint(self) -> str:
        """Identity of the weights for caching scores: path, size and mtime of what is loaded."""
        src = self.source()
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        return sha256_json(
            {"src": str(src.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
        )


def training_budget(expert: Expert) -> dict | None:
    """What one expert (or dense model) trained, for the report: `{cluster, steps, planned_steps, tokens,
    source}`, or None when nothing is recorded (a converted or merged model). `steps` / `tokens` are what the
    run really did: its latest checkpoint's step and sample position (train_state.json), else the newest
    `train` record of its train_log.jsonl (a consolidated.pt moved away from its checkpoints); tokens are
    samples x the corpus tokens one sample consumes (`corpus_tokens_per_sample` of what the expert is scored
    as: a TLM-trained expert counts its sample slots, as the scaling study does), None when unknown.
    `planned_steps`: expert.json's configured max_steps."""
    data = expert.meta.data or {}
    config = data.get("config") or {}
    planned = config.get("max_steps")
    per_sample = data.get("tokens_per_sample") or config.get("tokens_per_sample")
    step = position = None
    source = None
    ck = latest_checkpoint(expert.run_dir)
    if ck is not None and (ck / TRAIN_STATE).is_file():
        state = read_train_state(ck)
        step, position, source = state.get("step"), state.get("position"), "checkpoint"
    else:
        record = _last_train_record(expert.run_dir)
        if record is not None:
            step, position, source = record.get("step"), record.get("position"), "train_log"
    if step is None and planned is None:
        return None
    tokens = None
    if position is not None and per_sample:
        tokens = int(position) * corpus_tokens_per_sample(expert.objective, int(per_sample))
    return {
        "cluster": expert.cluster,
        "steps": None if step is None else int(step),
        "planned_steps": None if planned is None else int(planned),
        "tokens": tokens,
        "source": source or "expert.json (planned; no checkpoint or train_log.jsonl found)",
    }


def _last_train_record(run_dir: Path) -> dict | None:
    """The newest `kind: train` record of a run's train_log.jsonl (None: no log, or nothing logged)."""
    path = train_log_path(run_dir)
    if not path.is_file():
        return None
    for line in reversed(path.read_text(encoding="utf-8").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        if isinstance(record, dict) and record.get("kind", "train") == "train" and "step" in record:
            return record
    return None


def read_expert(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Expert:
    """An expert from a run dir, or from a consolidated.pt whose expert.json sits beside it (or inside it).
    `tokenizer`: a consolidated.pt with neither (a converted checkpoint) is read as one model of its own
    with that tokenizer (`standalone_expert`)."""
    p = Path(path)
    if p.is_file():
        run_dir, weights = p.parent, p
    elif p.is_dir():
        run_dir, weights = p, None
    else:
        raise InputError("expert not found (expected an expert run dir or a consolidated.pt)", p)
    ej = run_dir / EXPERT_JSON
    if not ej.is_file() and weights is not None:
        # a consolidated.pt moved away from its run dir still carries its expert.json (see consolidate.py)

        _, args, extra = load_consolidated(weights)
        info = extra.get("expert") if isinstance(extra, dict) else None
        if isinstance(info, dict) and "cluster" in info:
            return Expert(run_dir, ExpertInfo.from_dict(info, weights), weights)
        if tokenizer is not None:
            return standalone_expert(weights, args, tokenizer)
        raise InputError(
            f"no {EXPERT_JSON} beside it or inside it: as one model of its own it needs only its tokenizer "
            "(give --tokenizer DIR); as an expert of an ensemble, consolidate it from its run dir",
            weights,
        )
    if not ej.is_file():
        raise InputError(
            f"no {EXPERT_JSON} here, so the expert's cluster is unknown (xlbtm matches experts to "
            "clusters by metadata, never by folder order)",
            run_dir,
        )
    return Expert(run_dir, read_expert_info(run_dir), weights)


def standalone_expert(weights: Path, args: ModelArgs, tokenizer: str | os.PathLike) -> Expert:
    """One model with no expert.json (a `convert --to xlbtm` output, a checkpoint from elsewhere): a K=1
    expert whose metadata comes from the checkpoint's architecture and the tokenizer the user names."""
    tok = load_tokenizer(tokenizer)
    if tok.vocab_size > args.vocab_size:
        raise InputError(
            f"--tokenizer {tokenizer} has {tok.vocab_size} tokens but the model's embedding has "
            f"{args.vocab_size} rows: not this model's tokenizer",
            weights,
        )
    info = ExpertInfo(
        cluster=0,
        num_clusters=1,
        clusterer_fingerprint=None,
        objective="clm" if args.causal else "mlm",
        model_args=args.to_dict(),
        tokenizer=str(Path(tokenizer).resolve()),
        tokenizer_fingerprint=tok.fingerprint,
        seed_model=str(weights),
        run_name=weights.stem,
        data={"standalone": True},  # metadata made here, not read: --tokenizer was needed for it
    )
    return Expert(weights.parent, info, weights)


def find_experts(root: str | os.PathLike) -> list[Expert]:
    """The experts below `root`, ordered by expert.json's (num_clusters, cluster) (`formats.layout`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("--experts-dir not found", root)
    found = list_experts(root)
    if not found:
        raise InputError(f"no expert run dirs ({EXPERT_JSON}) below this directory", root)
    return [Expert(e.run_dir, e.info) for e in found]


def match_experts(
    experts: list[Expert],
    *,
    num_clusters: int | None,
    clusterer_fingerprint: str | None,
    dense: bool = False,
    lineage: dict[str, int] | None = None,
    exclude: Collection[int] = (),
    flags: str = "--model-paths or --experts-dir",
    exclude_flag: str | None = "--exclude-experts",
) -> list[Expert]:
    """Order experts by cluster id and check they form one complete, consistent ensemble.

    `lineage` ({fingerprint: K} of the clusterers the given one extends, `xlbtm.cluster.extend.lineage`): an
    expert trained on an ancestor's K clusters is the expert of that cluster id here (the extension keeps
    clusters 0..K-1 and adds new ones after them).
    `exclude` (cluster ids, `--exclude-experts`): those experts are switched off (data opt-out). They are
    dropped before any check and may be missing altogether (their run dirs deleted); the result holds the
    remaining experts only, still ordered by cluster id (so position != cluster id once one is excluded).

    Errors: a cluster without an expert, two experts for one cluster, experts trained for another K or
    another clusterer, different tokenizers or objectives; an excluded id outside [0, K), or every expert
    excluded (UsageError, naming --exclude-experts). `flags`: where the caller's experts come from, and
    `exclude_flag` its flag that switches experts off (None: it has none), as its messages name them (each
    command names its own flags).
    """
    if not experts:
        raise UsageError(f"no experts given ({flags})")
    if dense:
        if exclude:
            raise UsageError("--exclude-experts switches experts of an ensemble off; --ensemble-type dense has one")
        if len(experts) != 1:
            raise UsageError(f"--ensemble-type dense evaluates one model; got {len(experts)}")
        return experts
    exclude = set(exclude)
    experts = [e for e in experts if e.cluster not in exclude]
    if not experts:
        raise UsageError(f"--exclude-experts {','.join(map(str, sorted(exclude)))} leaves no expert to evaluate")
    if clusterer_fingerprint is None:
        Ks = {int(e.meta.num_clusters) for e in experts}
        if len(Ks) != 1:
            raise InputError(
                f"experts were trained for different numbers of clusters {sorted(Ks)}: "
                + ", ".join(f"{e.run_dir} (K={e.meta.num_clusters})" for e in experts)
            )
        fps = {e.meta.clusterer_fingerprint for e in experts}
        if len(fps) > 1:
            raise InputError(
                "experts were trained on clusters of different clusterers: "
                + ", ".join(f"{e.run_dir}={str(e.meta.clusterer_fingerprint)[:12]}" for e in experts)
            )
        K = Ks.pop()
        if num_clusters is not None and K != num_clusters:
            raise InputError(
                f"experts were trained for K={K} clusters but the clusterer has {num_clusters}",
                experts[0].run_dir / EXPERT_JSON,
            )
    else:
        assert num_clusters is not None  # given with clusterer_fingerprint: both are the clusterer's
        K = num_clusters
        known = {**(lineage or {}), clusterer_fingerprint: num_clusters}
        for e in experts:
            fp = e.meta.clusterer_fingerprint
            if fp not in known:
                raise InputError(
                    f"expert was trained on clusters of another clusterer (fingerprint {str(fp)[:12]} "
                    f"!= --path-to-clusterer {clusterer_fingerprint[:12]})",
                    e.run_dir / EXPERT_JSON,
                )
            if int(e.meta.num_clusters) != known[fp]:
                raise InputError(
                    f"experts were trained for K={e.meta.num_clusters} clusters but the clusterer has {known[fp]}",
                    e.run_dir / EXPERT_JSON,
                )
    by_cluster: dict[int, Expert] = {}
    for e in experts:
        if e.cluster in by_cluster:
            raise InputError(f"two experts for cluster {e.cluster}: {by_cluster[e.cluster].run_dir} and {e.run_dir}")
        by_cluster[e.cluster] = e
    unknown = sorted(k for k in exclude if not 0 <= k < K)
    if unknown:
        raise UsageError(f"--exclude-experts: no cluster {unknown} in this K={K} ensemble (ids are 0..{K - 1})")
    missing = [k for k in range(K) if k not in by_cluster and k not in exclude]
    if missing:
        raise InputError(
            f"no expert for cluster(s) {missing} of K={K} (have {sorted(by_cluster)}); train or list them ({flags})"
            + (
                f", or switch them off with {exclude_flag} {','.join(map(str, missing))} (e.g. a cluster "
                "without documents)"
                if exclude_flag
                else ""
            )
        )
    ordered = [by_cluster[k] for k in range(K) if k not in exclude]
    check_compatible(ordered)
    return ordered


def check_compatible(experts: list[Expert]) -> None:
    tok = {e.meta.tokenizer_fingerprint for e in experts}
    if len(tok) > 1:
        raise InputError(
            "experts use different tokenizers (tokenizer_fingerprint differs): "
            + ", ".join(f"{e.run_dir}={str(e.meta.tokenizer_fingerprint)[:12]}" for e in experts)
        )
    obj = {e.objective for e in experts}
    if len(obj) > 1:
        raise InputError(f"experts mix objectives {sorted(obj)}; an ensemble scores one kind (clm or mlm)")


def load_state(expert: Expert) -> dict:
    """The expert's plain (unsharded) state dict on CPU, from consolidated.pt or the latest DCP step."""
    src = expert.source()
    state = load_consolidated(src)[0] if src.is_file() else clean_keys(read_model_state(src))
    # the weights must be the model expert.json describes (a consolidated.pt replaced by another model's is
    # self-consistent, so only this comparison catches it)
    check_state_fits(
        state,
        ModelArgs.from_dict(expert.meta.model_args),
        src,
        claimed_by=str(expert.run_dir / EXPERT_JSON),
        remedy="the weights are another model's: rebuild them with `python -m xlbtm.scripts.consolidate "
        f"{expert.run_dir}`",
    )
    return state


def load_model(expert: Expert, state: dict | None = None):
    """(model in eval mode, ModelArgs) for an expert; `state` overrides the weights (parameter averaging)."""
    args = ModelArgs.from_dict(expert.meta.model_args)
    sd = load_state(expert) if state is None else state
    return model_from_state_dict(sd, args, where=str(expert.source())).eval(), args  # (scored in fp32)


def load_expert_tokenizer(expert: Expert):
    """The tokenizer expert.json names, checked against the fingerprint the expert was trained with."""
    ej = expert.run_dir / EXPERT_JSON
    tok_path = expert.meta.tokenizer
    if not tok_path:
        raise InputError("expert.json names no tokenizer", ej)
    tokenizer = load_tokenizer(tok_path)
    want = expert.meta.tokenizer_fingerprint
    if want and tokenizer.fingerprint != want:
        raise InputError(
            f"tokenizer at {tok_path} changed since the experts were trained (fingerprint "
            f"{tokenizer.fingerprint[:12]} != {str(want)[:12]} in expert.json)",
            ej,
        )
    return tokenizer


def resolve_ensemble(
    ensemble_type: str,
    *,
    experts_dir: str | None = None,
    model_paths: Collection[str] = (),
    clusterer=None,
    clusterer_path: str | None = None,
    exclude: Collection[int] = (),
    tokenizer: str | os.PathLike | None = None,
):
    """The experts an ensemble of `ensemble_type` mixes, from `experts_dir` or `model_paths`, matched to the
    (loaded) `clusterer` when it routes them: (experts ordered by cluster, the excluded ones left out;
    clusterer or None; tokenizer). eval_ensemble, generation and the lm-eval model all resolve through here.
    `clusterer_path` only names the clusterer in errors; `tokenizer`: a single model without expert.json."""
    if tokenizer is not None and (experts_dir or len(model_paths) != 1):
        raise UsageError("--tokenizer is for one model without expert.json; experts name their own tokenizer")
    experts = find_experts(experts_dir) if experts_dir else [read_expert(p, tokenizer) for p in model_paths]
    if tokenizer is not None and not experts[0].meta.data.get("standalone"):
        raise UsageError(
            f"--tokenizer: {experts[0].source()} names its own tokenizer in expert.json ({experts[0].meta.tokenizer}); "
            "drop --tokenizer"
        )
    dense = ensemble_type == "dense"
    by_clusterer = not dense and clusterer is not None
    experts = match_experts(
        experts,
        num_clusters=clusterer.num_clusters if by_clusterer else None,
        clusterer_fingerprint=clusterer.fingerprint if by_clusterer else None,
        dense=dense,
        lineage=lineage(clusterer) if by_clusterer else None,
        exclude=exclude,
    )
    if ensemble_type == "clustering" and getattr(clusterer, "centroids", None) is None:
        raise UsageError(
            f"--ensemble-type clustering routes by distance to centroids, but {clusterer_path} "
            f"is a {getattr(clusterer, 'kind', '?')} clusterer without them (a typological "
            "clusterer routes whole documents by language: --ensemble-type lang, in eval_ensemble and generate)"
        )
    if ensemble_type == "lang" and getattr(clusterer, "kind", None) != "typological":
        raise UsageError(
            f"--ensemble-type lang routes by language and needs a typological clusterer; "
            f"{clusterer_path} is of kind {getattr(clusterer, 'kind', '?')!r}"
        )
    return experts, clusterer, load_expert_tokenizer(experts[0])
