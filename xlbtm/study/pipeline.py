"""The stages of an ensemble-vs-dense comparison, as a user would type them (shared by quickstart and study).

    prep = prepare(cfg)                         # corpus -> tokenizer -> dense seed -> clusterer -> assignment
    point = run_point(cfg, prep, 300, out_dir)  # K experts x 300 steps + dense x K*300 steps, consolidated,
                                                #   evaluated (ensemble, oracle, dense) -> point.json

Each stage calls the library function behind a `python -m xlbtm.scripts.<name>` command, in this process, and
logs that command with the same flags, so a user can rerun any stage by hand. Every stage resumes by itself
(training from `latest`, assignment per file) and a finished stage is skipped, so rerunning after a crash
continues instead of starting over. Only a stage built from the same inputs and settings is reused: each one's
key is recorded in `stages.json` and a rerun that differs (another corpus, K, training setting) is refused
before anything is written (`xlbtm.study.stages`: why refused, not redone).

Objectives: `clm` (the default) trains XGLM seed, experts and dense model and scores them by perplexity;
`mlm` trains XLM-R ones (masked LM) and scores them by pseudo-perplexity (each token predicted once with a
share of the document masked, xlbtm.ensemble.scoring). One --out holds one objective: an artifact of the
other (tokenizer style, seed, expert runs) is refused, never reused or overwritten.

Compute matching (DESIGN.md): the dense model gets K x the expert steps at the same tokens per step, from
the same seed, on the union of the clusters' data, with the same schedule shape (warm-up the same fraction
of its steps, linear decay to 0) and the same evaluation. `point.json` records the training tokens each
side really consumed (from the checkpoints' sample positions, in corpus tokens: an MLM sample is `<s>` +
tokens_per_sample - 1 of them), so the claim is checked, not assumed.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xlbtm.cli import current_stage, get_logger, setup_logging
from xlbtm.cluster.assign import assign_corpus
from xlbtm.config import option, render_command, render_flags
from xlbtm.corpus import Corpus
from xlbtm.demo_corpus import write_demo_corpus
from xlbtm.ensemble.config import DEFAULT_TEMPERATURE, EvalConfig
from xlbtm.ensemble.report import compare_ppl, metric_name  # the study labels and counts as eval does
from xlbtm.errors import InputError, UsageError
from xlbtm.formats.checkpoints import latest_checkpoint, read_train_state
from xlbtm.formats.expert import EXPERT_JSON, read_expert_info
from xlbtm.formats.layout import RunLayout, consolidated_path, find_expert_dirs, hf_dir
from xlbtm.io import read_json, refuse_overlap, write_json
from xlbtm.launch.executor import JobRunMode
from xlbtm.models import PRESETS
from xlbtm.study.stages import LABELS, REUSED, StageRecord, corpus_identity, path_identity
from xlbtm.tokenizer import detect_style, train_tokenizer_from_corpus
from xlbtm.train.config import OBJECTIVES as ARCH_OF
from xlbtm.train.config import TrainExpertsRequest, model_kind

log = get_logger("study")

Clustering = Literal["tfidf", "typological"]
CLUSTERINGS: tuple[str, ...] = typing.get_args(Clustering)
WRITTEN = ("tokenizer", "seed", "clusterer", "clusters", "models", "eval")  # what the stages write under --out
# --objective -> (seed preset trained from scratch by default, tokenizer style, architecture name)
OBJECTIVES = {"clm": ("debug", "xglm", "XGLM"), "mlm": ("debug-xlmr", "xlmr", "XLM-R")}
# the run names of the pipeline's trainings (each the only run of its K below its serialization dir)
SEED_RUN, EXPERTS_RUN, DENSE_RUN = "seed", "demo", "dense"


@dataclass
class PipelineConfig:
    """Everything both sides of the comparison share (the quickstart and the study extend it)."""

    out: str = option(help="output directory for every artifact", aliases=("--output-dir",))
    data_dir: str | None = option(
        None,
        "your corpus (c-BTM layout: train/<shard>/*.jsonl, valid/*.jsonl); default: generate the demo corpus",
        aliases=("--path-to-data",),
    )
    num_clusters: int = option(4, "K experts")
    clustering: Clustering = option(
        "tfidf",
        "how the corpus is split into clusters, and how the ensemble routes",
        choices_help={
            "tfidf": "subword TF-IDF + balanced k-means, ensemble routed by the prefix's cluster posterior (c-BTM)",
            "typological": "languages grouped by URIEL, routed by `lang` (X-ELM)",
        },
    )
    # demo corpus size (~1.5M tokens: the runs stay near 2 epochs)
    num_train_docs: int = option(8000, "demo corpus: train documents")
    num_valid_docs: int = option(200, "demo corpus: valid documents")
    vocab_size: int = option(2000, "SentencePiece vocabulary size")
    seed_model: str | None = option(
        None,
        "an existing seed (HF dir, metaseq/fairseq or xlbtm .pt) instead of training one from scratch for "
        "--seed-steps; its tokenizer is used",
    )
    tokenizer: str | None = option(None, "with --seed-model: its tokenizer dir (default: the seed's own)")
    model_size: str | None = option(
        None, "preset of the seed model trained from scratch (default: debug for clm, debug-xlmr for mlm)"
    )
    tokens_per_sample: int = option(
        128, "tokens per training sample, for the seed, the experts and the dense model alike"
    )
    batch_size: int = option(8, "samples per training step")
    # dense seed pre-training. The method branches experts from a seed that already knows what all languages
    # share (c-BTM: OPT; X-ELM: XGLM); a barely trained seed leaves that to every expert separately and the
    # dense model wins (benchmarks/FIDELITY.md: 900 seed steps +3.6%, 3,000 steps -4.0% at 900 steps/expert)
    seed_steps: int = option(3000, "training steps of the dense seed")
    learning_rate: float = option(5e-3, "peak learning rate of experts and dense alike (the seed's too)")
    warmup_fraction: float = option(
        0.0, "linear warm-up over this fraction of each run's steps (same shape on both sides)"
    )
    # nearest-centroid assignment makes clusters unequal, and equal steps overtrain the small ones (FIDELITY.md:
    # a 10% cluster ran 25 epochs)
    step_allocation: Literal["equal", "proportional"] = option(
        "proportional", "experts' share of the K x steps: equal, or proportional to each cluster's training tokens"
    )
    temperature: float = option(DEFAULT_TEMPERATURE, "routing temperature (tfidf)")
    max_valid_docs: int | None = option(None, "evaluate at most this many valid documents")
    seed: int = option(0, "seed of the demo corpus, the clusterer, data order and initializations")
    run: JobRunMode = option("local", "where training, assignment and scoring jobs run")
    objective: Literal["clm", "mlm"] = option(
        "clm",
        "what the seed, experts and dense model learn (passed to train_experts --objective)",
        choices_help={
            "clm": "XGLM models, scored by perplexity",
            "mlm": "XLM-R models trained with masked LM, scored by pseudo-perplexity",
        },
    )
    parallel_data_dir: str | None = option(
        None,
        "with --objective mlm: translation pairs (<dir>/train[, valid]/<shard>/*.jsonl of {src, tgt, "
        "src_lang, tgt_lang}): experts and the dense model train MLM+TLM (the pairs clustered by their target "
        "side), and both are scored for cross-lingual retrieval on the valid pairs",
    )
    tlm_ratio: float = option(0.5, "with --parallel-data-dir: the share of training samples that are TLM")

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if self.model_size is None:
            self.model_size = OBJECTIVES[self.objective][0]
        elif self.seed_model is None:
            arch = PRESETS.get(self.model_size, {}).get("arch")
            if arch is not None and arch != ARCH_OF[self.objective]:
                raise UsageError(
                    f"--model-size {self.model_size} is an {arch} preset, but --objective "
                    f"{self.objective} trains {ARCH_OF[self.objective]} (e.g. --model-size "
                    f"{OBJECTIVES[self.objective][0]})"
                )
        if self.parallel_data_dir is not None and self.objective != "mlm":
            raise UsageError("--parallel-data-dir trains XLM-R experts with MLM+TLM: use it with --objective mlm")
        if not 0.0 <= self.tlm_ratio <= 1.0:
            raise UsageError(f"--tlm-ratio must be in [0, 1], got {self.tlm_ratio}")
        if self.num_clusters < 2:
            raise UsageError("--num-clusters must be >= 2 for an ensemble (the dense model is trained anyway)")
        if self.clustering not in CLUSTERINGS:
            raise UsageError(f"--clustering must be one of {', '.join(CLUSTERINGS)}")
        if self.step_allocation not in ("equal", "proportional"):
            raise UsageError("--step-allocation must be equal or proportional")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UsageError("--warmup-fraction must be in [0, 1)")
        if self.seed_steps < 1:
            raise UsageError("--seed-steps must be >= 1")


@dataclass
class Prepared:
    """The artifacts every budget point shares."""

    out: Path
    data: Path
    tokenizer: Path
    seed_checkpoint: Path
    clusterer: Path
    clusters: Path
    languages: list[str] = field(default_factory=list)
    pairs: Path | None = None  # --parallel-data-dir
    pair_clusters: Path | None = None  # its assignment (cluster --parallel-side tgt)
    models_key: dict = field(default_factory=dict)  # what a point's models are built from, but its steps


def command(stage: str, flags: dict, *positional) -> str:
    """The command line a user would type for this stage: `--flag value`, booleans as bare flags."""
    parts = [str(p) for p in positional]
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        parts += [flag] if value is True else [flag, str(value)]
    return f"python -m xlbtm.scripts.{stage} {shlex.join(parts)}"


def run_stage(stage: str, cmd: str, call: Callable[[], Any]) -> Any:
    """Run one stage in this process, logging the command that does the same from a shell."""
    outer = current_stage() or "study"
    log.info("$ %s", cmd)
    setup_logging(stage)  # the stage's own lines carry its name, as when a user runs it
    try:
        return call()
    finally:
        setup_logging(outer)


def train_experts(req: TrainExpertsRequest) -> list:
    """`train_experts` as asked: plan, print the plan, train, print the results; raises unless every expert
    completed. The log shows the command line that does the same (rendered from the request, never parsed)."""
    from xlbtm.train.experts import all_completed, describe_results, run_plan
    from xlbtm.train.plan import describe_plan, plan_experts

    def call():
        plan = plan_experts(req)
        for line in describe_plan(plan):
            print(line, flush=True)
        results = run_plan(plan)
        for line in describe_results(plan, results):
            print(line, flush=True)
        if not all_completed(results):
            raise RuntimeError("stage train_experts: not every expert completed (see the lines above)")
        return results

    return run_stage("train_experts", render_command("train_experts", req), call)


def consolidate(run_dir: Path, hf: bool = False) -> None:
    from xlbtm.ensemble.consolidate import consolidate as consolidate_run

    run_stage("consolidate", command("consolidate", {"--hf": hf}, run_dir), lambda: consolidate_run(run_dir, hf=hf))


def evaluate(cfg: EvalConfig) -> dict:
    """`eval_ensemble` as configured: the result (as written to <job_dir>/result.json)."""
    from xlbtm.ensemble.evaluate import run_eval

    def call():
        res = run_eval(cfg)
        log.info(
            f"result_ppl {res['result_ppl']:.4f} ({res['documents']} documents, {res['tokens']} tokens) -> "
            f"{cfg.job_dir}/result.json"
        )
        return res

    return run_stage("eval_ensemble", render_command("eval_ensemble", cfg), call)


def _train_settings(cfg: PipelineConfig, prep_data: Path, tok: Path, steps: int) -> dict:
    """The training settings every run of the pipeline shares (the seed's too: it trains with cfg.objective),
    by TrainExpertsRequest field."""
    interval = max(steps // 2, 1)
    return dict(
        path_to_data=str(prep_data),
        tokenizer=str(tok),
        run=cfg.run,
        num_gpus=1,
        tokens_per_sample=cfg.tokens_per_sample,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed + 1,
        max_steps=steps,
        warmup_updates=int(cfg.warmup_fraction * steps),
        objective=cfg.objective,
        save_interval_updates=interval,
        validate_interval_updates=interval,
        max_valid_samples=256,
    )  # a progress signal, not the evaluation


def _train_flags(cfg: PipelineConfig, prep_data: Path, tok: Path, steps: int) -> dict:
    """The same settings as train_experts flags (`--objective`: ...), as the logged command lines show them."""
    return render_flags(TrainExpertsRequest, _train_settings(cfg, prep_data, tok, steps))


def _train_request(cfg: PipelineConfig, prep_data: Path, tok: Path, steps: int, **what) -> TrainExpertsRequest:
    """A training request: the shared settings, and `what` it trains (seed, K, dirs...)."""
    return TrainExpertsRequest(**{**_train_settings(cfg, prep_data, tok, steps), **what})


def _languages(data: Path, split: str = "train") -> list[str]:
    return sorted({d.lang for d in Corpus(data).iter_documents(split) if d.lang})


def _flags(cfg: PipelineConfig, *names: str) -> dict:
    """These settings under their flags' names (how a refusal names the one that differs)."""
    return {"--" + name.replace("_", "-"): getattr(cfg, name) for name in names}


Stages = list[tuple[Path, str, dict, list[Path]]]  # (record dir, stage, key, the stage's outputs)


def stage_keys(
    cfg: PipelineConfig, out: Path, data: Path, tok: Path | None, points: Sequence[tuple[int, Path]]
) -> tuple[Stages, dict]:
    """(record dir, stage, key, its outputs) of every stage this run builds, in pipeline order, and the key of
    a point's models but its steps. A key holds the settings and inputs the stage's outputs depend on, its
    inputs' included (`xlbtm.study.stages`). `tok`: a given tokenizer (with --seed-model), None when the
    pipeline trains its own. `points`: (steps per expert, dir)."""
    corpus = {"--data-dir": corpus_identity(data) if data.is_dir() else {"path": str(data), "files": 0}}
    stages: Stages = []
    if cfg.seed_model:
        assert tok is not None
        seed = {"--seed-model": path_identity(Path(cfg.seed_model)), "--tokenizer": path_identity(tok)}
        tokenizer = seed
    else:  # the seed trains with the experts' sample shape, batch and peak learning rate (_train_settings)
        tokenizer = {**corpus, **_flags(cfg, "objective", "vocab_size", "seed")}
        seed = {
            **tokenizer,
            **_flags(cfg, "model_size", "seed_steps", "tokens_per_sample", "batch_size", "learning_rate"),
        }
        stages += [(out, "tokenizer", tokenizer, [out / "tokenizer"]), (out, "seed", seed, [out / "seed"])]
    clusterer = {**corpus, **tokenizer, **_flags(cfg, "num_clusters", "clustering", "seed")}
    stages.append((out, "clusterer", clusterer, [out / "clusterer", out / "clusters"]))
    pairs: dict = {}
    if cfg.parallel_data_dir is not None:
        pairs = {
            **clusterer,
            "--parallel-data-dir": corpus_identity(Path(cfg.parallel_data_dir)),
            **_flags(cfg, "tlm_ratio"),
        }
        stages.append((out, "pair_clusters", pairs, [out / "pair_clusters"]))
    # everything but where it runs and how it is evaluated (a point re-evaluates itself when those change)
    models = {
        **seed,
        **clusterer,
        **pairs,
        **_flags(cfg, "objective", "tokens_per_sample", "batch_size", "learning_rate", "seed"),
        **_flags(cfg, "step_allocation", "warmup_fraction"),
    }
    for steps, point in points:
        stages.append((point, "models", {**models, "--expert-steps": steps}, [point / "models"]))
    return stages, models


def _check_stages(cfg: PipelineConfig, stages: Stages) -> None:
    """Refuse (before anything is written) a stage in --out built from other inputs or settings."""
    # (formats import numpy: not on the path of `quickstart --help`)
    from xlbtm.formats.binarized import MANIFEST as BINARIZED_MANIFEST
    from xlbtm.formats.clusterer import META as CLUSTERER_JSON
    from xlbtm.formats.clusterer import read_meta as read_clusterer_meta

    records: dict[Path, StageRecord] = {}
    for root, stage, key, built in stages:
        records.setdefault(root, StageRecord(root, cfg.out)).check(stage, key, built)
        # the corpus each training binarized (its manifest names it): also holds for an --out older than
        # stages.json, whose tokenizer and seed cannot be compared otherwise
        corpus = key.get("--data-dir")
        for manifest in [m for b in built for m in b.glob(f"*_clusters/data-bin/*/{BINARIZED_MANIFEST}")]:
            m = read_json(manifest)
            was = m.get("data_dir") if isinstance(m, dict) else None
            if corpus is not None and was is not None and was != corpus["path"]:
                raise UsageError(
                    f"--out {cfg.out} holds {LABELS[stage]} ({manifest.parent}) built from --data-dir {was}; this "
                    f"run: {corpus['path']}: pass another --out ({REUSED})"
                )
    # the clusterer's own record of K and kind: also holds for an --out older than stages.json
    meta_path = Path(cfg.out).resolve() / "clusterer" / CLUSTERER_JSON
    if meta_path.is_file():
        meta = read_clusterer_meta(meta_path.parent)
        if meta.get("num_clusters") != cfg.num_clusters or meta.get("kind") != cfg.clustering:
            raise UsageError(
                f"--out {cfg.out} holds a clusterer built with --num-clusters {meta.get('num_clusters')} "
                f"--clustering {meta.get('kind')}; this run: --num-clusters {cfg.num_clusters} --clustering "
                f"{cfg.clustering}: pass another --out ({REUSED})"
            )


def _record_stages(stages: Stages) -> None:
    """Record each stage's key before it writes anything (a crashed run is then compared as well)."""
    by_root: dict[Path, dict[str, dict]] = {}
    for root, stage, key, _ in stages:
        by_root.setdefault(root, {})[stage] = key
    for root, keys in by_root.items():
        StageRecord(root, str(root)).record(keys)


def _demo_settings_match(cfg: PipelineConfig, data: Path) -> None:
    """A demo corpus a first run generated is kept: refuse flags that ask for another one."""
    summary = read_json(data / "demo_corpus.json")
    was = {
        "--num-train-docs": (summary.get("train") or {}).get("documents"),
        "--num-valid-docs": (summary.get("valid") or {}).get("documents"),
        "--seed": summary.get("seed"),
    }
    now = _flags(cfg, "num_train_docs", "num_valid_docs", "seed")
    for flag, value in now.items():
        if was[flag] != value:
            raise UsageError(
                f"--out {cfg.out} holds a demo corpus ({data}) generated with {flag} {was[flag]}; this run: "
                f"{value}: pass another --out ({REUSED})"
            )


def prepare(
    cfg: PipelineConfig,
    stage: Callable[[str], None] = lambda what: log.info(what),
    points: Sequence[tuple[int, Path]] = (),
) -> Prepared:
    """Corpus, tokenizer, dense seed, clusterer and the assignment of train and valid (each skipped when done).

    `points` (steps per expert, dir): the points the caller will run; their models are checked here too, so a
    stage built from other inputs or settings is refused before anything is written or trained."""
    out = Path(cfg.out).resolve()
    _refuse_other_objective(cfg, [_seed_run(out / "seed")], None if cfg.seed_model else out / "tokenizer")
    for _, point in points:  # (its own message names the objective: said before the stage keys' more general one)
        runs = expert_runs(point / "models", cfg.num_clusters) + [_dense_run(point / "models")]
        _refuse_other_objective(cfg, runs, trained="mlm+tlm" if cfg.parallel_data_dir else None)

    data = out / "data" if cfg.data_dir is None else Path(cfg.data_dir).resolve()
    if cfg.data_dir is not None:
        # the corpus may sit inside --out (the demo corpus a first run generated), not under what stages write
        refuse_overlap({f"--out ({sub}/)": out / sub for sub in WRITTEN}, {"--data-dir": cfg.data_dir})
    elif (data / "demo_corpus.json").is_file():
        _demo_settings_match(cfg, data)
    given_tok = None
    if cfg.seed_model:
        from xlbtm.train.plan import resolve_tokenizer

        given_tok = Path(resolve_tokenizer(cfg.seed_model, cfg.tokenizer)).resolve()
    _check_stages(cfg, stage_keys(cfg, out, data, given_tok, points)[0])
    out.mkdir(parents=True, exist_ok=True)

    if cfg.data_dir is None:
        stage(f"demo corpus: {cfg.num_train_docs} train / {cfg.num_valid_docs} valid documents -> {data}")
        if not (data / "demo_corpus.json").is_file():
            summary = write_demo_corpus(data, n_train=cfg.num_train_docs, n_valid=cfg.num_valid_docs, seed=cfg.seed)
            log.info("languages: %s", ", ".join(summary["languages"]))
    else:
        stage(f"corpus: {data}")
    keys, models_key = stage_keys(cfg, out, data, given_tok, points)  # the corpus exists now: its files count
    _record_stages(keys)

    if cfg.seed_model:
        assert given_tok is not None  # (resolved above)
        tok = given_tok
        stage(f"tokenizer: {tok} (the seed's)")
        seed_ckpt = Path(cfg.seed_model).resolve()
        stage(f"dense seed: {seed_ckpt} (given)")
    else:
        tok = out / "tokenizer"
        style = OBJECTIVES[cfg.objective][1]
        stage(f"SentencePiece tokenizer ({cfg.vocab_size} pieces, {style} style) -> {tok}")
        if not (tok / "tokenizer.json").is_file():
            flags = {
                "--data-dir": str(data),
                "--out": str(tok),
                "--vocab-size": cfg.vocab_size,
                "--style": style,
                "--seed": cfg.seed,
            }
            run_stage(
                "train_tokenizer",
                command("train_tokenizer", flags),
                lambda: train_tokenizer_from_corpus(data, tok, vocab_size=cfg.vocab_size, seed=cfg.seed, style=style),
            )
        seed_ckpt = _train_seed(cfg, data, tok, out / "seed", stage)
    clusterer, clusters, languages = _cluster(cfg, data, tok, out, stage)
    pairs = pair_clusters = None
    if cfg.parallel_data_dir is not None:
        pairs, pair_clusters = _cluster_pairs(cfg, clusterer, out, stage)
    return Prepared(out, data, tok, seed_ckpt, clusterer, clusters, languages, pairs, pair_clusters, models_key)


def _cluster_pairs(cfg: PipelineConfig, clusterer: Path, out: Path, stage) -> tuple[Path, Path]:
    """Assign the translation pairs (each split there is) with the corpus' clusterer, by their target side:
    a pair trains the expert of the language it translates into."""
    assert cfg.parallel_data_dir is not None  # (only called with one)
    pairs = Path(cfg.parallel_data_dir).resolve()
    refuse_overlap(
        {f"--out ({sub}/)": out / sub for sub in WRITTEN + ("pair_clusters",)}, {"--parallel-data-dir": pairs}
    )
    if not (pairs / "train").is_dir():
        raise InputError(
            "no 'train' split (expected --parallel-data-dir <dir>/train/<shard>/*.jsonl of "
            '{"src", "tgt", "src_lang", "tgt_lang"})',
            pairs,
        )
    pair_clusters = out / "pair_clusters"
    stage(f"assign the translation pairs of {pairs} by their target side -> {pair_clusters}")
    for split in [s for s in ("train", "valid") if (pairs / s).is_dir()]:
        flags = {
            "--data-dir": str(pairs),
            "--path-to-clusterer": str(clusterer),
            "--num-clusters": cfg.num_clusters,
            "--output-prefix": str(pair_clusters),
            "--split": split,
            "--run": cfg.run,
            "--parallel-side": "tgt",
        }
        run_stage(
            "cluster",
            command("cluster", flags),
            functools.partial(
                assign_corpus,
                pairs,
                clusterer,
                pair_clusters,
                split,
                run=cfg.run,
                num_clusters=cfg.num_clusters,
                parallel_side="tgt",
            ),
        )
    return pairs, pair_clusters


def _refuse_other_objective(
    cfg: PipelineConfig, run_dirs: list[Path], tokenizer: Path | None = None, trained: str | None = None
) -> None:
    """Stop (before anything is written) when --out already holds runs or a tokenizer of the other objective:
    resuming an XGLM run as an XLM-R one cannot work, and silently reusing it would compare the wrong models.
    `trained`: the runs must also have been trained with this objective (mlm vs mlm+tlm: the same model, but a
    finished MLM run would be "resumed" as MLM+TLM without training on a single pair)."""
    want = model_kind(cfg.objective)
    for run_dir in run_dirs:
        if not (run_dir / EXPERT_JSON).is_file():
            continue
        info = read_expert_info(run_dir)
        if info.objective != want:
            raise UsageError(
                f"{run_dir / EXPERT_JSON}: --out {cfg.out} holds {info.objective} "
                f"runs; --objective {cfg.objective} needs its own --out (pass another one)"
            )
        was = (info.data.get("config") or {}).get("objective", info.objective)
        if was != (trained or cfg.objective):
            raise UsageError(
                f"{run_dir / EXPERT_JSON}: --out {cfg.out} holds runs trained with {was}; "
                f"{'--parallel-data-dir (mlm+tlm)' if trained else f'--objective {cfg.objective}'} "
                "needs its own --out (pass another one)"
            )
    if tokenizer is not None and (tokenizer / "tokenizer.json").is_file():
        style = detect_style(tokenizer)
        if style != OBJECTIVES[cfg.objective][1]:
            raise UsageError(
                f"{tokenizer}: --out {cfg.out} holds an {style}-style tokenizer; --objective "
                f"{cfg.objective} needs its own --out (pass another one)"
            )


def _seed_run(seed_dir: Path) -> Path:
    return RunLayout.of(seed_dir, 1).run_dir(SEED_RUN, 0)


def _dense_run(models: Path) -> Path:
    return RunLayout.of(models, 1).run_dir(DENSE_RUN, 0)


def expert_runs(models: Path, num_clusters: int) -> list[Path]:
    """The ensemble's run dirs below `models` (`<K>_clusters/`), in cluster order: by expert.json's index,
    never by folder name (`demo.cluster10` sorts before `demo.cluster2`)."""
    return find_expert_dirs(RunLayout.of(models, num_clusters).root)


def _train_seed(cfg: PipelineConfig, data: Path, tok: Path, seed_dir: Path, stage) -> Path:
    """A tiny XGLM (clm) or XLM-R (mlm) trained from scratch on all data: stands in for a public checkpoint."""
    seed_run = _seed_run(seed_dir)
    seed_ckpt = consolidated_path(seed_run)
    stage(
        f"dense seed: {cfg.model_size} {OBJECTIVES[cfg.objective][2]} ({cfg.objective}), {cfg.seed_steps} steps "
        f"-> {seed_dir}"
    )
    if not seed_ckpt.is_file():
        train_experts(
            _train_request(
                cfg,
                data,
                tok,
                cfg.seed_steps,
                seed_model=cfg.model_size,
                num_clusters=1,
                serialization_dir=str(seed_dir),
                run_name=SEED_RUN,
                warmup_updates=cfg.seed_steps // 10,
            )
        )  # from scratch: always warm up
        consolidate(seed_run)
    return seed_ckpt


def _cluster(cfg: PipelineConfig, data: Path, tok: Path, out: Path, stage) -> tuple[Path, Path, list[str]]:
    """Fit the clusterer (tf-idf or typological) and assign train and valid; (clusterer, clusters, languages)."""
    from xlbtm.cluster.train import train_tfidf_clusterer, train_typological_clusterer

    K = cfg.num_clusters
    clusterer = out / "clusterer"
    languages = _languages(data)
    if cfg.clustering == "typological":
        stage(
            f"clusterer: typological (URIEL, balanced by tokens), K={K}, languages {','.join(languages)} -> {clusterer}"
        )
        flags = {
            "--typological": True,
            "--typology-mode": "balanced",
            "--langs": ",".join(languages),
            "--num-clusters": K,
            "--data-dir": str(data / "train"),
            "--tokenizer": str(tok),
            "--output-dir": str(clusterer),
        }

        def fit():
            return train_typological_clusterer(
                languages, K, clusterer, mode="balanced", data_dir=data / "train", tokenizer=tok
            )
    else:
        stage(f"clusterer: subword TF-IDF + balanced k-means, K={K} -> {clusterer}")
        flags = {
            "--data-dir": str(data / "train"),
            "--num-clusters": K,
            "--balanced": True,
            "--featurizer": "subword",
            "--tokenizer": str(tok),
            "--output-dir": str(clusterer),
            "--seed": cfg.seed,
        }

        def fit():
            return train_tfidf_clusterer(
                data / "train", K, clusterer, balanced=True, featurizer="subword", tokenizer=tok, seed=cfg.seed
            )

    if not (clusterer / "clusterer.json").is_file():
        run_stage("train_clusterer", command("train_clusterer", flags), fit)

    clusters = out / "clusters"
    stage(f"assign train and valid documents to clusters -> {clusters}")
    for split in ("train", "valid"):
        flags = {
            "--data-dir": str(data),
            "--path-to-clusterer": str(clusterer),
            "--num-clusters": K,
            "--output-prefix": str(clusters),
            "--split": split,
            "--run": cfg.run,
        }
        run_stage(
            "cluster",
            command("cluster", flags),
            functools.partial(assign_corpus, data, clusterer, clusters, split, run=cfg.run, num_clusters=K),
        )
    return clusterer, clusters, languages


def _consumed_tokens(run_dir: Path, cfg: PipelineConfig) -> int:
    """Training tokens a run really consumed: its checkpointed sample position x the corpus tokens per sample.
    (MLM+TLM: the sample's text positions, <s> + tokens_per_sample - 1, whether MLM or TLM: a TLM sample packs
    pairs and pads, so its slots, not its corpus tokens, are what both sides of the comparison spend alike.)"""
    from xlbtm.data.dataset import corpus_tokens_per_sample

    ck = latest_checkpoint(run_dir)
    per_sample = corpus_tokens_per_sample(cfg.objective, cfg.tokens_per_sample)
    return 0 if ck is None else int(read_train_state(ck)["position"]) * per_sample


def expert_training(models: Path, cfg: PipelineConfig) -> dict:
    """point.json's record of what the K experts below `models` trained, per cluster in cluster order: the
    steps each was given (expert.json) and the training tokens each consumed (its latest checkpoint)."""
    expert_dirs = expert_runs(models, cfg.num_clusters)
    tokens = [_consumed_tokens(d, cfg) for d in expert_dirs]
    return {
        "expert_steps_per_cluster": [read_expert_info(d).data["config"]["max_steps"] for d in expert_dirs],
        "ensemble_train_tokens": sum(tokens),
        "expert_train_tokens": tokens,
    }


def run_point(
    cfg: PipelineConfig,
    prep: Prepared,
    expert_steps: int,
    point_dir: Path,
    stage: Callable[[str], None] = lambda what: log.info(what),
    hf_export: bool = False,
) -> dict:
    """K experts x `expert_steps` and the dense model x K*`expert_steps`, consolidated and evaluated.

    Returns (and writes `point_dir/point.json`, last) the ensemble, oracle and dense perplexities overall
    and per language, and the training tokens each side consumed. A point whose point.json exists is read back.
    `hf_export`: also export expert 0 as a Hugging Face dir (the quickstart shows that stage too).
    """
    point_dir = Path(point_dir)
    done = point_dir / "point.json"
    # what the point depends on (not where it is written or what else the study runs)
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "budgets", "run", "expert_steps")}
    key["expert_steps"] = expert_steps
    if prep.models_key:  # (prepare() checked it already, for the points it was told of)
        models_stage = [
            (point_dir, "models", {**prep.models_key, "--expert-steps": expert_steps}, [point_dir / "models"])
        ]
        _check_stages(cfg, models_stage)
        _record_stages(models_stage)
    if done.is_file():
        old = read_json(done)
        # points written before --objective / --parallel-data-dir existed were clm without pairs; their keys lack them
        if {"objective": "clm", "parallel_data_dir": None, "tlm_ratio": 0.5, **(old.get("key") or {})} == key:
            log.info(f"budget {expert_steps} steps/expert: already evaluated ({done})")
            return old
        log.info(f"{done} was made with other settings; evaluating again")
    K = cfg.num_clusters
    models = point_dir / "models"
    dense_steps = K * expert_steps
    _refuse_other_objective(
        cfg, expert_runs(models, K) + [_dense_run(models)], trained="mlm+tlm" if prep.pairs else None
    )
    t0 = time.time()
    tlm = (
        {}
        if prep.pairs is None
        else {"objective": "mlm+tlm", "parallel_data": str(prep.pairs), "tlm_ratio": cfg.tlm_ratio}
    )
    stage(
        f"{K} experts x {expert_steps} steps ({cfg.step_allocation} allocation), dense x {dense_steps} steps"
        + (f", MLM+TLM ({cfg.tlm_ratio:g} of the samples TLM)" if tlm else "")
        + f" -> {models}"
    )
    train_experts(
        _train_request(
            cfg,
            prep.data,
            prep.tokenizer,
            expert_steps,
            **tlm,
            **({"path_to_parallel_clusters_dir": str(prep.pair_clusters)} if tlm else {}),
            seed_model=str(prep.seed_checkpoint),
            num_clusters=K,
            path_to_clusters_dir=str(prep.clusters),
            serialization_dir=str(models),
            run_name=EXPERTS_RUN,
            step_allocation=cfg.step_allocation,
        )
    )
    train_experts(
        _train_request(
            cfg,
            prep.data,
            prep.tokenizer,
            dense_steps,
            **tlm,
            seed_model=str(prep.seed_checkpoint),
            num_clusters=1,
            serialization_dir=str(models),
            run_name=DENSE_RUN,
        )
    )
    train_s = time.time() - t0

    expert_dirs = expert_runs(models, K)
    dense_run = _dense_run(models)
    stage(f"consolidate {len(expert_dirs)} experts and the dense model")
    for i, d in enumerate(expert_dirs + [dense_run]):
        hf = hf_export and i == 0
        if not consolidated_path(d).is_file() or (hf and not hf_dir(d).is_dir()):
            consolidate(d, hf=hf)

    eval_dir = point_dir / "eval"
    stage(
        f"evaluate the ensemble ({'prefix' if cfg.clustering == 'tfidf' else 'lang'} routing), the oracle and "
        f"the dense model ({metric_name(cfg.objective)}) -> {eval_dir}"
    )
    common: dict[str, Any] = dict(
        data_dir=str(prep.data),
        data_subset="valid",
        max_valid_steps=cfg.max_valid_docs or None,
        run=cfg.run if cfg.run == "slurm" else None,
        # cross-lingual retrieval on the valid pairs
        parallel_data=str(prep.pairs) if prep.pairs is not None and (prep.pairs / "valid").is_dir() else None,
    )
    evaluate(EvalConfig(**common, model_paths=[str(dense_run)], ensemble_type="dense", job_dir=str(eval_dir / "dense")))
    routing: dict[str, Any] = (
        dict(ensemble_type="clustering", temperatures=[cfg.temperature])
        if cfg.clustering == "tfidf"
        else dict(ensemble_type="lang")
    )
    evaluate(
        EvalConfig(
            **common,
            **routing,
            path_to_clusterer=str(prep.clusterer),
            experts_dir=str(RunLayout.of(models, K).root),
            job_dir=str(eval_dir / "ensemble"),
            dense_result=str(eval_dir / "dense" / "result.json"),
        )
    )

    ens = read_json(eval_dir / "ensemble" / "result.json")  # what the reports say, read back
    dense = read_json(eval_dir / "dense" / "result.json")
    oracle = ens.get("oracle") or {}
    per_language = {}
    for lang, d in dense["per_language"].items():
        e = ens["per_language"].get(lang, {})
        per_language[lang] = {
            "dense": d["ppl"],
            "ensemble": e.get("ppl"),
            "oracle": oracle.get("per_language", {}).get(lang, {}).get("ppl"),
            "tokens": d["tokens"],
        }
    # better / tied / worse by report.md's rule: a change that rounds to 0.0% is a tie, neither a win nor a loss
    outcomes = [compare_ppl(v["ensemble"], v["dense"]) for v in per_language.values()]
    point = {
        "key": key,
        "objective": cfg.objective,
        "metric": metric_name(cfg.objective),  # what the *_ppl fields are: ppl, or MLM pseudo-ppl
        "expert_steps": expert_steps,
        "dense_steps": dense_steps,
        **expert_training(models, cfg),
        "dense_train_tokens": _consumed_tokens(dense_run, cfg),
        "ensemble_ppl": ens["result_ppl"],
        "oracle_ppl": oracle.get("result_ppl"),
        "dense_ppl": dense["result_ppl"],
        "relative": ens["result_ppl"] / dense["result_ppl"] - 1.0,
        "languages_won": outcomes.count("better"),
        "languages_tied": outcomes.count("tied"),
        "languages": len(per_language),
        "per_language": per_language,
        "eval_tokens": dense["tokens"],
        "train_seconds": round(train_s, 1),
        "ensemble_report": str(eval_dir / "ensemble" / "report.md"),
    }
    if "retrieval" in ens:  # accuracy@1 (tgt -> src), ensemble beside dense, overall and per language
        point["retrieval"] = {
            "ensemble": ens["retrieval"]["accuracy"],
            "dense": dense["retrieval"]["accuracy"],
            "per_language": {
                lang: {
                    "ensemble": v["accuracy"],
                    "dense": dense["retrieval"]["per_language"].get(lang, {}).get("accuracy"),
                    "chance": v["chance"],
                }
                for lang, v in ens["retrieval"]["per_language"].items()
            },
        }
    write_json(done, point)
    return point
