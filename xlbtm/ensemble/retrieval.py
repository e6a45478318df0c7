"""Cross-lingual retrieval on parallel data for encoder (masked-LM) experts: Tatoeba-style accuracy@1.

`eval_ensemble --parallel-data DIR` reads the translation pairs of `DIR/<--parallel-subset>` (default valid;
`{"src", "tgt", "src_lang", "tgt_lang"}` lines, through `Corpus.iter_pairs`) and asks, for every pair: is the
representation of its `tgt` nearest (cosine) to its own `src` among a fixed pool of candidate sources?

Representation. One sentence is encoded alone, as XLM-R encodes one sentence: `<s> t_1 .. t_L </s>` (at most
the experts' trained context - 2 tokens of text, as eval reads documents). Its vector is the mean of the final
hidden states (`forward_hidden`, before the LM head) over t_1 .. t_L -- `<s>`, `</s>` and padding excluded,
since they look the same in every sentence and only pull all vectors together -- then L2-normalized, so a dot
product is the cosine. (A text that
tokenizes to nothing is pooled over `<s> </s>`.)

Pools ("among the batch"). Pairs are grouped by `tgt_lang` (the per-language key; gettext is English -> X).
Each language's pairs, in file order, are split into ceil(n / B) consecutive blocks of near-equal size
(B = --retrieval-batch-size, default 1000: a whole Tatoeba language, and the whole language of the gettext
valid split), and retrieval happens within a block. Chance level is 1 / block size, reported per language.

accuracy@1 (tgt -> src, the headline; src -> tgt too). A pair is a hit when its own source is strictly more
similar to its target than every other candidate: a tie counts as a miss, so a representation that maps
everything to one vector scores 0, not 1/B by index luck. Candidates with the same text as the own source
(duplicate sentences in a pool) are not competitors: retrieving an identical copy is not an error.

Centering (--retrieval-centering pool, the default). Before the cosines, each side's vectors are centered on
their pool's mean (one language, one side) and renormalized, as Libovicky et al. (2020, "On the language
neutrality of multilingual BERT") do: mean-pooled states share one large direction (the language's own, and
the anisotropy every trained encoder has), which otherwise decides the nearest neighbour. Measured on gettext
(benchmarks/BENCHMARKS.md, "MLM+TLM vs MLM"): uncentered, a random-init debug-xlmr found 30% of 300-candidate
pools (the lexical overlap of UI strings survives a random projection) and every trained one 0.5-2%, near the
0.3% chance; `none` keeps the raw cosines. result.json's `uncentered` holds those beside the centered numbers.

Ensemble. Expert k gives the normalized vector e_k(x); the ensemble's vector of a sentence x is
normalize(sum_k w_k(x) e_k(x)) with w(x) the routing weights eval_ensemble gives a document made of x alone:
clustering: softmax(-||h(x) - c_k||^2 / T) of the whole sentence (as MLM scoring routes whole documents,
--temperature / --topk / --cbtm-compat, uniform when x featurizes to nothing); lang: one-hot on the expert of
the side's language (`src_lang` / `tgt_lang`; uniform over the remaining experts when that expert is
excluded); uniform: 1/K. Which side's weights (--retrieval-routing):
  target (default): both sides of a pair are read with the weights of its target side: the experts of the
      language a pool is about encode its English candidates too. Experts trained apart from one seed drift
      into spaces of their own, so a source and a target read by different experts are not comparable (in a
      first run, 10 steps from the seed, the own-side lang ensemble was at chance (0.02) in 7 of 11 languages where
      every expert alone was above it); and it is the target language's expert that TLM aligned with English
      (`cluster --parallel-side tgt` gives it those pairs).
  own: each side routed by its own text (or language), as a document of that side would be scored.
Why a weighted sum of per-expert unit vectors: it is the representation counterpart of mixing
the experts' probabilities (the same weights, per sentence), normalizing first keeps one expert with larger
hidden states from dominating, and experts branched from one seed model share its representation space.
(Concatenating sqrt(w_k) e_k would not assume a shared space, but gives similarity 0 between a source and a
target routed to different experts: every candidate of a hard-routed (lang) pair would tie.)
dense / average are one model (K = 1). oracle (the best expert per document by its likelihood) has no
counterpart here and is refused with --parallel-data; result.json's `retrieval.experts` holds every single
expert's accuracy instead. Causal (clm) experts are refused too: their states see the prefix only, a
different representation than the one the contract defines.

Every expert embeds the sentences once (cached in the job dir under embeddings/, keyed by the pairs and the
weights); every --temperature / --topk setting mixes those vectors. Runs in this process (also with --run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xlbtm.cli import get_logger
from xlbtm.corpus import Corpus, Document
from xlbtm.ensemble import mixing, routing
from xlbtm.ensemble.experts import load_model
from xlbtm.ensemble.merge import average_states
from xlbtm.ensemble.routing import hard_log_weights, router_from_clusterer
from xlbtm.ensemble.scoring import cache_ok, length_batches, save_npz
from xlbtm.errors import InputError
from xlbtm.io import sha256_json, write_json
from xlbtm.runtime import resolve_device

log = get_logger("ensemble")

LOG_EVERY = 2000  # sentences between progress lines


@dataclass
class ParallelSet:
    """Tokenized translation pairs, in file order."""

    pairs: list  # xlbtm.corpus.Pair
    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    langs: list[str]  # the per-language key of each pair: tgt_lang ("null" when absent)
    fingerprint: str

    def __len__(self) -> int:
        return len(self.pairs)


def load_parallel(
    data_dir, split: str, tokenizer, max_tokens: int, *, max_pairs: int | None = None, skip_bad_lines: bool = False
) -> ParallelSet:
    """The pairs of `data_dir/split` (at most `max_pairs` per language, the first in file order), each side
    tokenized and cut to `max_tokens` text tokens. Bad lines: InputError naming file:line (or skipped)."""
    if not Path(data_dir).is_dir():
        raise InputError("--parallel-data directory not found", data_dir)
    if not (Path(data_dir) / split).is_dir():  # (the corpus' own message would point at --data-dir)
        raise InputError(
            f"--parallel-data has no split '{split}' (choose one with --parallel-subset)", Path(data_dir) / split
        )
    corpus = Corpus(data_dir, skip_bad_lines=skip_bad_lines)
    pairs = []
    count: dict[str, int] = {}
    for p in corpus.iter_pairs(split):
        lang = p.tgt_lang or "null"
        if max_pairs is not None and count.get(lang, 0) >= max_pairs:
            continue
        count[lang] = count.get(lang, 0) + 1
        pairs.append(p)
    if corpus.stats.skipped:
        log.warning(f"--parallel-data: {corpus.stats.summary()}")
    src = [x[:max_tokens] for x in tokenizer.encode_batch([p.src for p in pairs])]
    tgt = [x[:max_tokens] for x in tokenizer.encode_batch([p.tgt for p in pairs])]
    langs = [p.tgt_lang or "null" for p in pairs]
    fp = sha256_json(
        {
            "data_dir": str(Path(data_dir).resolve()),
            "split": split,
            "max_tokens": max_tokens,
            "tokenizer": tokenizer.fingerprint,
            "sp_ids": [p.sp_id for p in pairs],
            "ids": [src, tgt],
        }
    )
    log.info(f"--parallel-data: {len(pairs)} pairs in {len(count)} languages from {Path(data_dir) / split}")
    return ParallelSet(pairs, src, tgt, langs, fp)


# ------------------------------------------------------------------------------------------ vectors


def embed(
    model, args, id_lists: list[list[int]], *, device: str = "cpu", batch_tokens: int = 8192, what: str = ""
) -> np.ndarray:
    """[n, D] float32: each `<s> ids </s>` encoded alone, final hidden states mean-pooled over the text
    tokens (specials and padding excluded), L2-normalized. Batched by similar length (<= batch_tokens padded)."""
    n = len(id_lists)
    text_len = np.asarray([len(x) for x in id_lists], dtype=np.int64)
    out = np.zeros((n, args.d_model), dtype=np.float32)
    done, shown = 0, 0
    with torch.inference_mode():
        for batch in length_batches(text_len + 2, batch_tokens):
            L = torch.from_numpy(text_len[batch])
            T = int(L.max()) + 2
            inp = torch.full((len(batch), T), args.pad_id, dtype=torch.long)
            for i, d in enumerate(batch):
                inp[i, 0] = args.bos_id
                inp[i, 1 : len(id_lists[d]) + 1] = torch.as_tensor(id_lists[d], dtype=torch.long)
                inp[i, len(id_lists[d]) + 1] = args.eos_id
            pos = torch.arange(T)[None, :]
            pad = pos >= (L + 2)[:, None]
            keep = (pos >= 1) & (pos <= L[:, None])
            keep = torch.where((L == 0)[:, None], ~pad, keep)  # nothing but <s> </s>: pool those
            h = model.forward_hidden(inp.to(device), pad.to(device)).float()
            k = keep.to(device).unsqueeze(-1).float()
            v = F.normalize((h * k).sum(1) / k.sum(1), dim=-1)
            out[batch] = v.cpu().numpy()
            done += len(batch)
            if done - shown >= LOG_EVERY or done == n:
                log.info(f"{what}: embedded {done}/{n} sentences")
                shown = done
    return out


def expert_vectors(
    job_dir,
    name: str,
    expert,
    ps: ParallelSet,
    *,
    state: dict | None = None,
    weights_key: str | None = None,
    device: str | None = None,
    batch_tokens: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """(src [n, D], tgt [n, D]) of one model, cached in job_dir/embeddings/<name>.npz (key: the pairs and
    the weights; `state` / `weights_key` as in score_expert, for the parameter-averaged model)."""
    path = Path(job_dir) / "embeddings" / f"{name}.npz"
    key = sha256_json(
        {"pairs": ps.fingerprint, "weights": weights_key or expert.fingerprint(), "pooling": "mean-text-tokens/l2"}
    )
    if cache_ok(path, key):
        with np.load(path, allow_pickle=False) as z:
            log.info(f"{name}: cached sentence vectors found, skipping")
            return z["src"], z["tgt"]
    device = resolve_device(device)
    model, args = load_model(expert, state)
    model.to(device)
    both = embed(model, args, ps.src_ids + ps.tgt_ids, device=device, batch_tokens=batch_tokens, what=name)
    src, tgt = both[: len(ps)], both[len(ps) :]
    save_npz(path, src=src, tgt=tgt)
    write_json(path.with_suffix(".json"), {"key": key, "name": name, "pairs": len(ps)})
    return src, tgt


def mix_vectors(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """normalize(sum_k w[n, k] * vectors[k, n]) -> [n, D]; vectors [K, n, D] (unit rows), weights [n, K]."""
    v = np.einsum("nk,knd->nd", weights.astype(np.float64), vectors.astype(np.float64))
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------------ routing


@dataclass
class SideRoute:
    """What routing needs of one side of every pair: squared distances to the centroids ([n, K_all] + empty
    [n]; clustering) or the cluster of the side's language ([n]; lang)."""

    sqdist: np.ndarray | None = None
    empty: np.ndarray | None = None
    cluster: np.ndarray | None = None


def route_sides(ensemble_type: str, clusterer, tokenizer, ps: ParallelSet) -> tuple[SideRoute, SideRoute]:
    """(src, tgt) routing inputs: each side routed by its own text (clustering) or language (lang)."""
    if ensemble_type == "clustering":
        router = router_from_clusterer(clusterer, tokenizer)
        out = []
        for ids in (ps.src_ids, ps.tgt_ids):
            got = [router.document_distances(x) for x in ids]
            out.append(SideRoute(sqdist=np.stack([d for d, _ in got]), empty=np.asarray([e for _, e in got])))
        return out[0], out[1]
    if ensemble_type == "lang":

        def side(texts, langs):
            return SideRoute(
                cluster=np.asarray(
                    clusterer.predict(
                        [Document(sp_id=p.sp_id, text=t, lang=lg) for p, t, lg in zip(ps.pairs, texts, langs)]
                    ),
                    dtype=np.int64,
                )
            )

        return (
            side([p.src for p in ps.pairs], [p.src_lang for p in ps.pairs]),
            side([p.tgt for p in ps.pairs], [p.tgt_lang for p in ps.pairs]),
        )
    return SideRoute(), SideRoute()


def side_weights(
    ensemble_type: str,
    route: SideRoute,
    clusters: list[int],
    n: int,
    *,
    temperature=None,
    topk: int = -1,
    cbtm_compat: bool = False,
) -> np.ndarray:
    """[n, K] routing weights of one side for one setting (K = len(clusters), the remaining experts): the
    same functions eval_ensemble mixes probabilities with."""
    K = len(clusters)
    if K == 1:
        return np.ones((n, 1))
    if ensemble_type == "clustering":
        assert route.sqdist is not None and route.empty is not None  # route_sides routed by distance
        log_w = routing.log_weights(
            torch.from_numpy(route.sqdist[:, clusters]),
            temperature,
            topk=topk,
            cbtm_compat=cbtm_compat,
            empty=torch.from_numpy(route.empty),
        )
    elif ensemble_type == "lang":
        assert route.cluster is not None  # route_sides routed by language
        log_w, _ = hard_log_weights(route.cluster, clusters, torch.arange(n))
    elif ensemble_type == "uniform":
        log_w = mixing.uniform_log_weights(K, n)
    else:
        raise AssertionError(ensemble_type)
    return log_w.exp().T.numpy()


# ------------------------------------------------------------------------------------------ accuracy


def pools(langs: list[str], size: int) -> list[tuple[str, np.ndarray]]:
    """(language, pair indices) of every candidate pool: each language's pairs in file order, split into
    ceil(n / size) consecutive blocks of near-equal size."""
    by_lang: dict[str, list[int]] = {}
    for i, lg in enumerate(langs):
        by_lang.setdefault(lg, []).append(i)
    out = []
    for lg in sorted(by_lang):
        idx = np.asarray(by_lang[lg], dtype=np.int64)
        out += [(lg, block) for block in np.array_split(idx, math.ceil(len(idx) / size))]
    return out


def pool_hits(src: np.ndarray, tgt: np.ndarray, src_text=None, tgt_text=None) -> tuple[np.ndarray, np.ndarray]:
    """(tgt -> src hits [n], src -> tgt hits [n]) within one pool of unit vectors: pair i is a hit when its
    own counterpart is strictly more similar than every candidate of another text (ties are misses)."""
    sim = tgt.astype(np.float64) @ src.astype(np.float64).T  # [tgt i, src j]

    def hits(s, texts):
        n = s.shape[0]
        index: dict = {}
        codes = np.arange(n) if texts is None else np.asarray([index.setdefault(t, len(index)) for t in texts])
        rivals = np.where(codes[None, :] == codes[:, None], -np.inf, s)  # self and copies of its text
        return np.diag(s) > rivals.max(1)

    return hits(sim, src_text), hits(sim.T, tgt_text)


def center(vectors: np.ndarray) -> np.ndarray:
    """Unit rows minus their mean, renormalized: what is left once the direction every sentence of the pool
    shares is taken out (a row equal to the mean stays zero, and matches nothing)."""
    v = vectors.astype(np.float64) - vectors.astype(np.float64).mean(0, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def retrieval_accuracy(
    src: np.ndarray, tgt: np.ndarray, ps: ParallelSet, pool_size: int, centering: bool = True
) -> dict:
    """{accuracy, src2tgt, pairs, per_language: {lang: {accuracy, src2tgt, pairs, pools, chance}}}: accuracy
    is tgt -> src accuracy@1; the overall numbers are shares of all pairs. `centering`: each side's vectors are
    centered on their pool's mean first (see the module docstring)."""
    per: dict[str, dict] = {}
    t2s_all = s2t_all = 0
    for lg, idx in pools(ps.langs, pool_size):
        s, t = (center(src[idx]), center(tgt[idx])) if centering else (src[idx], tgt[idx])
        t2s, s2t = pool_hits(s, t, [ps.pairs[i].src for i in idx], [ps.pairs[i].tgt for i in idx])
        r = per.setdefault(lg, {"hits": 0, "s2t": 0, "pairs": 0, "pools": 0, "chance": 0.0})
        r["hits"] += int(t2s.sum())
        r["s2t"] += int(s2t.sum())
        r["pairs"] += len(idx)
        r["pools"] += 1
        r["chance"] += 1.0  # = the sum over this pool's pairs of 1 / pool size
        t2s_all += int(t2s.sum())
        s2t_all += int(s2t.sum())
    per_language = {
        lg: {
            "accuracy": r["hits"] / r["pairs"],
            "src2tgt": r["s2t"] / r["pairs"],
            "pairs": r["pairs"],
            "pools": r["pools"],
            "chance": r["chance"] / r["pairs"],
        }
        for lg, r in per.items()
    }
    n = max(len(ps), 1)
    return {"accuracy": t2s_all / n, "src2tgt": s2t_all / n, "pairs": len(ps), "per_language": per_language}


# ------------------------------------------------------------------------------------------ the run


def evaluate_retrieval(
    cfg, experts, clusterer, tokenizer, ps: ParallelSet, settings: list[tuple]
) -> tuple[dict, list[dict]]:
    """Embed with every model once, then mix per (temperature, topk) setting.

    Returns (result.json's `retrieval` for the first setting, [{accuracy, src2tgt}] per setting).
    """
    # the cluster id of each model's vectors (one model -- dense, average -- is row 0)
    clusters = [0] if cfg.ensemble_type in ("dense", "average") else [e.cluster for e in experts]
    centering = cfg.retrieval_centering == "pool"
    K = len(clusters)
    pool = cfg.retrieval_batch_size
    kw = dict(device=cfg.device, batch_tokens=cfg.batch_tokens)
    if cfg.ensemble_type == "average":
        vecs = [
            expert_vectors(
                cfg.job_dir,
                "average",
                experts[0],
                ps,
                state=average_states(experts),
                weights_key=sha256_json({"average": [e.fingerprint() for e in experts]}),
                **kw,
            )
        ]
    else:
        names = ["dense" if cfg.ensemble_type == "dense" else f"expert{e.cluster}" for e in experts]
        vecs = [expert_vectors(cfg.job_dir, name, e, ps, **kw) for name, e in zip(names, experts)]
    src_v, tgt_v = np.stack([s for s, _ in vecs]), np.stack([t for _, t in vecs])  # [K, n, D]
    src_route, tgt_route = (
        route_sides(cfg.ensemble_type, clusterer, tokenizer, ps) if K > 1 else (SideRoute(), SideRoute())
    )
    per_setting, first = [], None
    for temperature, topk in settings:
        w = dict(temperature=temperature, topk=topk, cbtm_compat=cfg.cbtm_compat)
        tgt_w = side_weights(cfg.ensemble_type, tgt_route, clusters, len(ps), **w)
        src_w = (
            tgt_w
            if cfg.retrieval_routing == "target"
            else side_weights(cfg.ensemble_type, src_route, clusters, len(ps), **w)
        )
        src, tgt = mix_vectors(src_v, src_w), mix_vectors(tgt_v, tgt_w)
        r = retrieval_accuracy(src, tgt, ps, pool, centering)
        if first is None and centering:  # what centering changed, on the first setting
            raw = retrieval_accuracy(src, tgt, ps, pool, False)
            r["uncentered"] = {"accuracy": raw["accuracy"], "src2tgt": raw["src2tgt"]}
        per_setting.append({"accuracy": r["accuracy"], "src2tgt": r["src2tgt"]})
        first = first or r
    experts_alone = None
    if K > 1:  # every expert on its own: which one carries the ensemble's retrieval
        experts_alone = {}
        for k, c in enumerate(clusters):
            r = retrieval_accuracy(src_v[k], tgt_v[k], ps, pool, centering)
            experts_alone[str(c)] = {
                "accuracy": r["accuracy"],
                "per_language": {lg: v["accuracy"] for lg, v in r["per_language"].items()},
            }
    assert first is not None  # settings is never empty
    out = {
        **first,
        "experts": experts_alone,
        "settings": {
            "parallel_data": str(cfg.parallel_data),
            "subset": cfg.parallel_subset,
            "pool_size": pool,
            "max_pairs_per_language": cfg.retrieval_max_pairs,
            "routing": cfg.retrieval_routing,
            "centering": cfg.retrieval_centering,
            "direction": "tgt->src (accuracy); src->tgt (src2tgt)",
            "representation": "mean of final hidden states over the text tokens, L2-normalized; "
            "ensemble: routing-weighted sum of the experts' unit vectors",
        },
    }
    log.info(
        f"retrieval accuracy@1 {out['accuracy']:.3f} (tgt->src), {out['src2tgt']:.3f} (src->tgt) over "
        f"{len(ps)} pairs, pools of <= {pool}"
    )
    return out, per_setting
