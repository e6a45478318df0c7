"""Ensemble evaluation: mixing, routing, scoring caches, reports, the eval_ensemble script."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from tolerance import ppl_rel_tol

from xlbtm.ensemble import mixing, routing

# DCP warns that it runs without a process group: single-process save/load is what these tests do
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _rand_logp(K, N, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, N, V, generator=g, dtype=torch.float64)
    tgt = torch.randint(0, V, (N,), generator=g)
    return torch.log_softmax(logits, -1)[:, torch.arange(N), tgt]  # [K, N]


def _rand_log_w(K, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(K, N, generator=g, dtype=torch.float64) * 3, dim=0)


# ------------------------------------------------------------------------------------------------ mixing


def test_mixture_equals_brute_force():
    K, N = 4, 37
    logp, log_w = _rand_logp(K, N), _rand_log_w(K, N)
    got = mixing.mix(logp, log_w)
    p, w = logp.exp().numpy(), log_w.exp().numpy()
    for n in range(N):
        brute = math.log(sum(w[k, n] * p[k, n] for k in range(K)))
        assert got[n].item() == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_mixture_in_log_space_does_not_underflow():
    logp = torch.full((3, 5), -2000.0, dtype=torch.float64)  # exp() underflows to 0 in probability space
    out = mixing.mix(logp, mixing.uniform_log_weights(3, 5))
    assert torch.allclose(out, torch.full((5,), -2000.0, dtype=torch.float64))


def test_topk_keeps_largest_and_renormalizes():
    K, N = 5, 20
    log_w = _rand_log_w(K, N)
    out = mixing.topk_renormalize(log_w, 2)
    w, o = log_w.exp(), out.exp()
    assert torch.allclose(o.sum(0), torch.ones(N, dtype=torch.float64))
    assert ((o > 0).sum(0) == 2).all()
    for n in range(N):
        top = torch.topk(w[:, n], 2).indices
        assert torch.allclose(o[top, n], w[top, n] / w[top, n].sum())
    assert mixing.topk_renormalize(log_w, -1) is log_w
    assert mixing.topk_renormalize(log_w, K) is log_w


def test_identical_experts_give_the_single_experts_ppl():
    one = _rand_logp(1, 64)
    logp = one.repeat(3, 1)
    for log_w in (_rand_log_w(3, 64), mixing.uniform_log_weights(3, 64)):
        mixed = mixing.mix(logp, log_w)
        assert mixing.perplexity(mixed.sum(), 64) == pytest.approx(mixing.perplexity(one.sum(), 64), rel=1e-12)


def test_one_hot_posteriors_give_that_experts_ppl():
    K, N = 4, 50
    logp = _rand_logp(K, N)
    for k in range(K):
        log_w = mixing.one_hot_log_weights(torch.full((N,), k), K)
        mixed = mixing.mix(logp, log_w)
        assert mixing.perplexity(mixed.sum(), N) == pytest.approx(mixing.perplexity(logp[k].sum(), N), rel=1e-12)


def test_oracle_picks_best_expert_per_document():
    K = 3
    offsets = [0, 10, 15, 40]
    logp = _rand_logp(K, 40, seed=3)
    best, which = mixing.oracle(logp, offsets)
    for d in range(3):
        sums = [logp[k, offsets[d] : offsets[d + 1]].sum().item() for k in range(K)]
        assert which[d].item() == int(np.argmax(sums))
        assert best[d].item() == pytest.approx(max(sums))


def test_perplexity_empty_is_nan():
    assert math.isnan(mixing.perplexity(0.0, 0))
    assert mixing.perplexity(-10 * math.log(4), 10) == pytest.approx(4.0)


# ----------------------------------------------------------------------------------------------- routing


def _toy_featurizer(V=40, d=6, K=3, seed=0, dtype="float64"):
    from xlbtm.cluster.featurize import Lsa

    rng = np.random.default_rng(seed)
    idf = 1.0 + rng.random(V) * 3
    comps = rng.standard_normal((d, V))
    cents = rng.standard_normal((K, d))
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return routing.LinearFeaturizer(Lsa(idf=idf, components=comps), dtype=dtype), cents


def _scratch_featurize(f: routing.LinearFeaturizer, ids):
    """sklearn's pipeline written out: counts -> *idf -> l2 norm -> SVD -> l2 norm (unknown ids count 0)."""
    V = f.lsa.idf.shape[0]
    counts = np.zeros(V)
    for t in ids:
        if 0 <= t < V:
            counts[t] += 1
    x = counts * f.lsa.idf
    n = np.linalg.norm(x)
    if n == 0:
        return np.zeros(f.dim)
    p = f.lsa.components @ (x / n)
    return p / np.linalg.norm(p)


def test_incremental_routing_equals_per_prefix_recompute():
    f, cents = _toy_featurizer()
    rng = np.random.default_rng(5)
    ids = [45] + list(rng.integers(0, 40, size=80)) + [7, 7, 7, 7]  # 45: outside the clusterer's vocabulary
    inc = routing.Router(cents, featurizer=f)
    ref = routing.Router(cents, featurize_many=lambda seqs: np.stack([_scratch_featurize(f, s) for s in seqs]))
    d_inc, e_inc = inc.distances(ids)
    d_ref, e_ref = ref.distances(ids)
    assert d_inc.shape == (len(ids), 3)
    np.testing.assert_allclose(d_inc, d_ref, atol=1e-9)
    assert (e_inc == e_ref).all()
    assert e_inc[0] and e_inc[1]  # empty prefix, then a prefix of one unknown token
    for T in (0.05, 1.0):
        assert torch.allclose(
            routing.log_weights(torch.from_numpy(d_inc), T, empty=torch.from_numpy(e_inc)),
            routing.log_weights(torch.from_numpy(d_ref), T, empty=torch.from_numpy(e_ref)),
        )


def test_float32_routing_is_close_to_float64():
    f64, cents = _toy_featurizer(V=300, d=20, K=5)
    f32, _ = _toy_featurizer(V=300, d=20, K=5, dtype="float32")
    ids = list(np.random.default_rng(1).integers(0, 300, size=500))
    d64, e64 = routing.Router(cents, featurizer=f64).distances(ids)
    d32, e32 = routing.Router(cents, featurizer=f32).distances(ids)
    np.testing.assert_allclose(d32, d64, atol=1e-5)
    assert (e32 == e64).all()


def test_routing_weights_formula_and_empty_prefix_is_uniform():
    f, cents = _toy_featurizer()
    ids = [5, 9, 12, 5]
    d, e = routing.Router(cents, featurizer=f).distances(ids)
    T = 0.1
    lw = routing.log_weights(torch.from_numpy(d), T, empty=torch.from_numpy(e)).exp()
    assert torch.allclose(lw[:, 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    for j in range(1, 4):
        h = _scratch_featurize(f, ids[:j])
        logits = np.array([-np.sum((h - c) ** 2) / T for c in cents])
        expect = np.exp(logits - logits.max())
        np.testing.assert_allclose(lw[:, j].numpy(), expect / expect.sum(), rtol=1e-9)


def test_cbtm_compat_equals_cbtm_formula():
    """c-BTM: distances from kmeans are squared euclidean and are squared again: softmax(-dist**2 / T)."""
    f, cents = _toy_featurizer()
    ids = [5, 9, 12, 5, 30]
    d, e = routing.Router(cents, featurizer=f).distances(ids)
    T = 0.3
    lw = routing.log_weights(torch.from_numpy(d), T, cbtm_compat=True, empty=torch.from_numpy(e)).exp()
    for j in range(len(ids)):
        h = _scratch_featurize(f, ids[:j])  # zero vector at j=0, as c-BTM's Normalizer leaves it
        dist = torch.tensor([np.sum((h - c) ** 2) for c in cents])  # kmeans_pytorch.pairwise_distance
        cbtm = torch.nn.functional.softmax(-(dist**2) / T, dim=0)
        assert torch.allclose(lw[:, j], cbtm.to(torch.float64), atol=1e-12)
    # and it differs from xlbtm's default weights
    assert not torch.allclose(lw, routing.log_weights(torch.from_numpy(d), T).exp())


def test_document_distances_use_the_whole_document():
    f, cents = _toy_featurizer()
    ids = [3, 4, 5, 6]
    d, empty = routing.Router(cents, featurizer=f).document_distances(ids)
    h = _scratch_featurize(f, ids)
    np.testing.assert_allclose(d, [np.sum((h - c) ** 2) for c in cents], atol=1e-10)
    assert not empty


# ------------------------------------------------------------------------------------ end to end (tiny)

from pathlib import Path  # noqa: E402

from xlbtm.errors import InputError, UsageError  # noqa: E402


class FakeSubwordClusterer:
    """Stands in for a subword TF-IDF clusterer artifact: the arrays routing needs + predict + fingerprint."""

    kind = "tfidf"

    def __init__(self, V, K, d=8, seed=0, fingerprint="fp-test"):
        from xlbtm.cluster.featurize import Lsa

        rng = np.random.default_rng(seed)
        self.idf = 1.0 + rng.random(V)
        self.components = rng.standard_normal((d, V))
        self.lsa = Lsa(idf=self.idf, components=self.components)  # the artifact's linear model, as the real one
        c = rng.standard_normal((K, d))
        self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.num_clusters, self.fingerprint = K, fingerprint


class FakeTypological:
    kind = "typological"

    def __init__(self, mapping, fingerprint="fp-typo"):
        self.mapping, self.fingerprint, self.num_clusters = mapping, fingerprint, max(mapping.values()) + 1

    def predict(self, docs):
        return [self.mapping.get(d.lang, 0) for d in docs]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Demo corpus + tokenizer + model args shared by the end-to-end tests."""
    from xlbtm.corpus import Corpus
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    root = tmp_path_factory.mktemp("ens")
    write_demo_corpus(root / "data", n_train=120, n_valid=12, seed=0)
    texts = [d.text for d in Corpus(root / "data").iter_documents("train")]
    tok = load_tokenizer(train_sentencepiece(texts, root / "tok", vocab_size=900, seed=0))
    return {"root": root, "data": root / "data", "tok": tok}


def make_expert(
    run_dir: Path,
    tok,
    cluster: int,
    K: int,
    *,
    seed: int,
    fingerprint="fp-test",
    objective="clm",
    consolidated=False,
    max_positions=64,
    state=None,
):
    """An expert run dir as training leaves it: expert.json + a DCP checkpoint (or a consolidated.pt)."""
    import torch.distributed.checkpoint as dcp

    from xlbtm.io import write_json
    from xlbtm.models import build_model, get_preset

    args = get_preset(
        "debug" if objective == "clm" else "debug-xlmr", vocab_size=tok.vocab_size, max_positions=max_positions
    )
    torch.manual_seed(seed)
    model = build_model(args)
    if state is not None:
        model.load_state_dict(state)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / "expert.json",
        {
            "format": "xlbtm-expert/1",
            "cluster": cluster,
            "num_clusters": K,
            "clusterer_fingerprint": fingerprint,
            "objective": objective,
            "model_args": args.to_dict(),
            "tokenizer": str(tok.path),
            "tokenizer_fingerprint": tok.fingerprint,
            "seed_model": "debug",
            # the experts of one ensemble started from one initialization (weights differ as if trained)
            "seed_identity": f"preset {'debug' if objective == 'clm' else 'debug-xlmr'}, init seed 0",
            "run_name": run_dir.name,
            "data": {},
        },
    )
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if consolidated:
        from xlbtm.formats.consolidated import save_consolidated

        save_consolidated(run_dir / "consolidated.pt", sd, args)
    else:
        step = run_dir / "checkpoints" / "step_10"
        dcp.save({"model": sd}, checkpoint_id=str(step), no_dist=True)
        (run_dir / "checkpoints" / "latest").write_text("step_10")
    return model.eval(), args


def _eval(tiny, job, **kw):
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval

    kw.setdefault("data_dir", str(tiny["data"]))
    kw.setdefault("data_subset", "valid")
    return run_eval(EvalConfig(job_dir=str(job), **kw))


@pytest.fixture
def fake_clusterer(monkeypatch, tiny):
    import xlbtm.ensemble.evaluate as ev

    made = {}

    def load(path):
        if path not in made:
            made[path] = (
                FakeTypological({"de": 1})
                if "typo" in path
                else FakeSubwordClusterer(tiny["tok"].vocab_size, 2, fingerprint="fp-test")
            )
        return made[path]

    monkeypatch.setattr(ev, "_load_clusterer", load)
    return load


def _brute_force(job, docs, names, route, T, topk):
    """Recompute the ensemble ppl from the cached per-expert scores, token by token, in probability space."""
    from xlbtm.ensemble.scoring import read_scores

    lp = np.stack([read_scores(job, n) for n in names]).astype(np.float64)
    total = 0.0
    for n in range(lp.shape[1]):
        if route["token_empty"][n]:
            w = np.full(lp.shape[0], 1 / lp.shape[0])
        else:
            z = -route["token_sqdist"][n] / T
            w = np.exp(z - z.max())
            w /= w.sum()
        if 0 < topk < len(w):
            keep = np.argsort(-w, kind="stable")[:topk]
            m = np.zeros_like(w)
            m[keep] = w[keep]
            w = m / m.sum()
        total += math.log(float((w * np.exp(lp[:, n])).sum()))
    return math.exp(-total / lp.shape[1])


def test_eval_clustering_sweep_matches_brute_force_and_reuses_scores(tiny, fake_clusterer, tmp_path):
    from xlbtm.ensemble.scoring import load_docs

    ser = tmp_path / "ser" / "2_clusters"
    # folder names deliberately disagree with the clusters in expert.json: matching must use the metadata
    make_expert(ser / "run.cluster0", tiny["tok"], 1, 2, seed=1)
    make_expert(ser / "run.cluster1", tiny["tok"], 0, 2, seed=2)
    job = tmp_path / "job"
    kw = dict(
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(ser),
        temperatures=[0.5, 2.0],
        topks=[-1, 1],
        max_valid_steps=8,
    )
    res = _eval(tiny, job, **kw)
    assert res["documents"] == 8 and res["tokens"] > 0
    assert set(res) >= {
        "dataset",
        "result_ppl",
        "per_language",
        "per_cluster",
        "tokens",
        "documents",
        "settings",
        "top_expert",
    }
    assert len(res["sweep"]) == 4
    assert res["settings"]["experts"][0].endswith("run.cluster1")  # cluster 0 lives in folder cluster1
    docs = load_docs(job)
    route = dict(np.load(job / "routing.npz"))
    for s in res["sweep"]:
        assert s["result_ppl"] == pytest.approx(
            _brute_force(job, docs, ["expert0", "expert1"], route, s["temperature"], s["topk"]), rel=1e-6
        )
    # per-language token counts add up
    assert sum(v["tokens"] for v in res["per_language"].values()) == res["tokens"]
    assert (job / "report.md").read_text().count("| ") > 5
    assert (job / "ppl_by_language.png").read_bytes()[:4] == b"\x89PNG"
    # a second run with other settings reuses the score caches
    mtimes = {p: p.stat().st_mtime_ns for p in (job / "scores").glob("*.npz")}
    res2 = _eval(
        tiny,
        job,
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(ser),
        temperatures=[0.5],
        topks=[-1],
        max_valid_steps=8,
    )
    assert res2["result_ppl"] == pytest.approx(res["sweep"][0]["result_ppl"], rel=1e-12)
    assert {p: p.stat().st_mtime_ns for p in (job / "scores").glob("*.npz")} == mtimes
    # ... and keeps the first run's report beside its own: result.json / report.md are the latest run's, the
    # earlier ones are moved aside under their settings' name, and report.md lists them
    assert len(json.loads((job / "result.json").read_text())["sweep"]) == 1
    (kept,) = job.glob("result.clustering_T0.5+2_topk-1+1_*.json")
    assert json.loads(kept.read_text())["sweep"] == json.loads(json.dumps(res["sweep"]))
    tag = kept.name[len("result.") : -len(".json")]
    assert "## Sweep" in (job / f"report.{tag}.md").read_text()  # the 4-setting sweep's own report
    assert (job / f"ppl_by_language.{tag}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"`report.{tag}.md`" in (job / "report.md").read_text()
    # a rerun with identical settings replaces its own files and keeps the other run's
    before = sorted(p.name for p in job.iterdir())
    _eval(tiny, job, **{**kw, "temperatures": [0.5], "topks": [-1]})
    assert sorted(p.name for p in job.iterdir()) == before
    # back to the first settings: the second run is moved aside, the first run's copy is superseded
    _eval(tiny, job, **kw)
    assert len(json.loads((job / "result.json").read_text())["sweep"]) == 4
    assert not kept.exists() and len(list(job.glob("result.clustering_T0.5_topk-1_*.json"))) == 1


def test_cached_clm_scores_equal_a_plain_forward(tiny, tmp_path):
    from xlbtm.ensemble.experts import read_expert
    from xlbtm.ensemble.scoring import load_docs, prepare_docs, read_scores, score_expert

    model, args = make_expert(tmp_path / "e", tiny["tok"], 0, 1, seed=3, fingerprint=None)
    docs = prepare_docs(tmp_path / "job", tiny["data"], "valid", tiny["tok"], max_tokens=40, max_docs=5)
    assert np.diff(docs.offsets).max() <= 40
    score_expert(tmp_path / "job", "dense", read_expert(tmp_path / "e"), load_docs(tmp_path / "job"), batch_tokens=100)
    lp = read_scores(tmp_path / "job", "dense")
    for d in range(docs.num_docs):
        x = torch.from_numpy(docs.doc(d))
        inp = torch.cat([torch.tensor([args.eos_id]), x[:-1]])[None]
        with torch.no_grad():
            ref = torch.log_softmax(model(inp).float(), -1)[0, torch.arange(len(x)), x]
        np.testing.assert_allclose(lp[docs.offsets[d] : docs.offsets[d + 1]], ref.numpy(), rtol=1e-4, atol=1e-4)


def test_clm_windows_cover_every_target_once():
    from xlbtm.ensemble.scoring import clm_windows

    for length, window, stride in [(1, 8, 8), (8, 8, 8), (9, 8, 8), (100, 16, 16), (100, 16, 5), (37, 10, 1)]:
        seen = []
        for a, e, f in clm_windows(length, window, stride):
            assert e - a <= window and a <= f < e
            assert f - a >= min(window - stride, a)  # later windows keep >= window - stride tokens of context
            seen += range(f, e)
        assert seen == list(range(length))
    with pytest.raises(ValueError):
        clm_windows(10, 4, 5)


@pytest.mark.parametrize("stride", [None, 5])
def test_long_documents_are_scored_whole_in_windows_of_the_trained_context(tiny, tmp_path, stride):
    """A document longer than the window is scored completely; each target's log-prob is a plain forward over
    exactly the context its window gives it (so nothing is cut, and no position past the window is used)."""
    from xlbtm.ensemble.experts import read_expert
    from xlbtm.ensemble.scoring import clm_windows, load_docs, prepare_docs, read_scores, score_expert

    model, args = make_expert(tmp_path / "e", tiny["tok"], 0, 1, seed=3, fingerprint=None, max_positions=64)
    docs = prepare_docs(tmp_path / "job", tiny["data"], "valid", tiny["tok"], max_tokens=None, max_docs=6)
    lengths = np.diff(docs.offsets)
    window = 16
    assert lengths.max() > 3 * window  # the fixture really has documents longer than a window
    score_expert(
        tmp_path / "job",
        "dense",
        read_expert(tmp_path / "e"),
        load_docs(tmp_path / "job"),
        batch_tokens=64,
        window=window,
        stride=stride,
    )
    lp = read_scores(tmp_path / "job", "dense")
    assert len(lp) == lengths.sum()
    for d in range(docs.num_docs):
        x = torch.from_numpy(docs.doc(d))
        stream = torch.cat([torch.tensor([args.eos_id]), x])
        ref = np.zeros(len(x))
        for a, e, f in clm_windows(len(x), window, stride or window):
            with torch.no_grad():
                out = torch.log_softmax(model(stream[a:e][None]).float(), -1)[0]
            ref[f:e] = out[torch.arange(f - a, e - a), x[f:e]].numpy()
        np.testing.assert_allclose(lp[docs.offsets[d] : docs.offsets[d + 1]], ref, rtol=1e-4, atol=1e-4)


def test_eval_scores_in_the_experts_trained_context_by_default(tiny, tmp_path):
    """The default window is expert.json's tokens_per_sample (here 16 of 64 positions): a wider --context-window
    gives other scores, and the settings say which window was used."""
    from xlbtm.io import read_json, write_json

    ser = tmp_path / "ser"
    make_expert(ser / "dense.cluster0", tiny["tok"], 0, 1, seed=3, fingerprint=None, max_positions=64)
    info = read_json(ser / "dense.cluster0" / "expert.json")
    info["data"] = {"tokens_per_sample": 16}
    write_json(ser / "dense.cluster0" / "expert.json", info)
    a = _eval(tiny, tmp_path / "a", ensemble_type="dense", experts_dir=str(ser))
    b = _eval(tiny, tmp_path / "b", ensemble_type="dense", experts_dir=str(ser), context_window=64)
    assert a["settings"]["context_window"] == 16 and a["settings"]["stride"] == 16
    assert b["settings"]["context_window"] == 64
    assert a["tokens"] == b["tokens"] and a["result_ppl"] != pytest.approx(b["result_ppl"], rel=1e-6)
    with pytest.raises(UsageError):
        _eval(tiny, tmp_path / "c", ensemble_type="dense", experts_dir=str(ser), context_window=65)


def test_stale_consolidated_pt_is_not_scored_over_newer_checkpoints(tiny, tmp_path):
    """Training went on after consolidation: eval scores the newest checkpoint and says so."""
    import time

    import torch.distributed.checkpoint as dcp

    from xlbtm.ensemble.experts import read_expert

    run = tmp_path / "e"
    make_expert(run, tiny["tok"], 0, 1, seed=3, fingerprint=None, consolidated=True)
    assert read_expert(run).source().name == "consolidated.pt"
    time.sleep(0.01)
    model, _ = make_expert(tmp_path / "other", tiny["tok"], 0, 1, seed=4, fingerprint=None)
    step = run / "checkpoints" / "step_20"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(step), no_dist=True)
    (run / "checkpoints" / "latest").write_text("step_20")
    import logging

    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("xlbtm.ensemble")  # the xlbtm logger may not propagate to pytest's handler
    logger.addHandler(handler)
    try:
        src = read_expert(run).source()
    finally:
        logger.removeHandler(handler)
    assert src == step and any("re-run consolidate" in m for m in seen)


def test_identical_experts_give_the_dense_ppl_end_to_end(tiny, fake_clusterer, tmp_path):
    model, _ = make_expert(tmp_path / "dense", tiny["tok"], 0, 1, seed=5, fingerprint=None)
    sd = model.state_dict()
    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=9, state=sd)
    dense = _eval(
        tiny, tmp_path / "jd", ensemble_type="dense", model_paths=[str(tmp_path / "dense")], max_valid_steps=6
    )
    for et in ("clustering", "uniform", "oracle", "average"):
        r = _eval(
            tiny,
            tmp_path / f"j{et}",
            ensemble_type=et,
            path_to_clusterer="C",
            experts_dir=str(tmp_path / "ens"),
            max_valid_steps=6,
            dense_result=str(tmp_path / "jd"),
        )
        assert r["result_ppl"] == pytest.approx(dense["result_ppl"], rel=1e-5), et
    assert "dense ppl" in (tmp_path / "jclustering" / "report.md").read_text()


def test_oracle_lang_and_uniform(tiny, fake_clusterer, tmp_path):
    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=20 + k, fingerprint="fp-typo")
    kw = dict(experts_dir=str(tmp_path / "ens"), max_valid_steps=10)
    single = [
        _eval(
            tiny,
            tmp_path / f"s{k}",
            ensemble_type="dense",
            model_paths=[str(tmp_path / "ens" / f"x.cluster{k}")],
            max_valid_steps=10,
        )
        for k in range(2)
    ]
    orc = _eval(tiny, tmp_path / "o", ensemble_type="oracle", **kw)
    uni = _eval(tiny, tmp_path / "u", ensemble_type="uniform", **kw)
    lang = _eval(tiny, tmp_path / "l", ensemble_type="lang", path_to_clusterer="typo", **kw)
    assert orc["result_ppl"] <= min(s["result_ppl"] for s in single) + 1e-9
    assert orc["result_ppl"] <= lang["result_ppl"] + 1e-9
    # lang: German documents go to expert 1, everything else to expert 0
    for lg, v in lang["per_language"].items():
        ref = single[1 if lg == "de" else 0]["per_language"][lg]["ppl"]
        assert v["ppl"] == pytest.approx(ref, rel=1e-5)
    assert set(lang["per_cluster"]) <= {"0", "1"}
    assert min(s["result_ppl"] for s in single) * 0.5 < uni["result_ppl"] < max(s["result_ppl"] for s in single) * 1.01


def test_mlm_pseudo_perplexity_scores_every_token_once(tiny, tmp_path):
    from xlbtm.ensemble.experts import read_expert
    from xlbtm.ensemble.scoring import MLM_GROUPS, prepare_docs, read_scores, score_expert

    model, args = make_expert(tmp_path / "m", tiny["tok"], 0, 1, seed=4, fingerprint=None, objective="mlm")
    docs = prepare_docs(tmp_path / "job", tiny["data"], "valid", tiny["tok"], max_tokens=30, max_docs=3)
    score_expert(tmp_path / "job", "m", read_expert(tmp_path / "m"), docs)
    lp = read_scores(tmp_path / "job", "m")
    assert np.isfinite(lp).all() and (lp < 0).all()
    mask = tiny["tok"].mask_id
    x = torch.from_numpy(docs.doc(0))
    for g in range(MLM_GROUPS):  # recompute doc 0 by hand
        pos = torch.arange(g, len(x), MLM_GROUPS)
        inp = torch.cat([torch.tensor([args.bos_id]), x]).clone()
        inp[pos + 1] = mask
        with torch.no_grad():
            ref = torch.log_softmax(model(inp[None]).float(), -1)[0, pos + 1, x[pos]]
        np.testing.assert_allclose(lp[pos.numpy()], ref.numpy(), rtol=1e-4, atol=1e-4)


def test_expert_matching_errors(tiny, tmp_path):
    from xlbtm.ensemble.experts import find_experts, match_experts

    ser = tmp_path / "ser"
    for k in (0, 2):
        make_expert(ser / f"r.cluster{k}", tiny["tok"], k, 3, seed=k)
    with pytest.raises(InputError, match=r"no expert for cluster\(s\) \[1\]"):
        match_experts(find_experts(ser), num_clusters=3, clusterer_fingerprint="fp-test")
    make_expert(ser / "r.cluster1", tiny["tok"], 1, 3, seed=1)
    assert [e.cluster for e in match_experts(find_experts(ser), num_clusters=3, clusterer_fingerprint="fp-test")] == [
        0,
        1,
        2,
    ]
    with pytest.raises(InputError, match="another clusterer"):
        match_experts(find_experts(ser), num_clusters=3, clusterer_fingerprint="other")
    info0 = json.loads((ser / "r.cluster0" / "expert.json").read_text())
    (ser / "r.cluster0" / "expert.json").write_text(json.dumps({**info0, "clusterer_fingerprint": "x"}))
    with pytest.raises(InputError, match="different clusterers"):  # even without --path-to-clusterer
        match_experts(find_experts(ser), num_clusters=None, clusterer_fingerprint=None)
    (ser / "r.cluster0" / "expert.json").write_text(json.dumps(info0))
    with pytest.raises(InputError, match="K=3"):
        match_experts(find_experts(ser), num_clusters=4, clusterer_fingerprint="fp-test")
    info = json.loads((ser / "r.cluster1" / "expert.json").read_text())
    info["tokenizer_fingerprint"] = "different"
    (ser / "r.cluster1" / "expert.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="different tokenizers"):
        match_experts(find_experts(ser), num_clusters=3, clusterer_fingerprint="fp-test")
    info["tokenizer_fingerprint"], info["cluster"] = tiny["tok"].fingerprint, 2
    (ser / "r.cluster1" / "expert.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="two experts for cluster 2"):
        match_experts(find_experts(ser), num_clusters=3, clusterer_fingerprint="fp-test")


def test_eval_script_flags_and_errors(tiny, fake_clusterer, tmp_path, capsys):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import eval_ensemble

    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=30 + k)
    paths = ",".join(str(tmp_path / "ens" / f"x.cluster{k}") for k in (1, 0))
    argv = [
        "--data-dir",
        str(tiny["data"]),
        "--data-subset",
        "valid",
        "--path-to-clusterer",
        "C",
        "--model-paths",
        paths,
        "--temperature",
        "0.1",
        "0.3",
        "--topk",
        "-1",
        "--ensemble-type",
        "clustering",
        "--max-valid-steps",
        "4",
        "--job-dir",
        str(tmp_path / "job"),
        "--cbtm-compat",
    ]
    assert main_wrapper("eval_ensemble", eval_ensemble.main, argv) == 0
    res = json.loads((tmp_path / "job" / "result.json").read_text())
    assert res["settings"]["cbtm_compat"] is True and len(res["sweep"]) == 2
    assert "result_ppl" in capsys.readouterr().out
    # tokenizer changed after training -> clear error, exit 2
    info = json.loads((tmp_path / "ens" / "x.cluster0" / "expert.json").read_text())
    for k in range(2):
        p = tmp_path / "ens" / f"x.cluster{k}" / "expert.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "tokenizer_fingerprint": "stale"}))
    assert main_wrapper("eval_ensemble", eval_ensemble.main, argv) == 2
    assert "tokenizer" in capsys.readouterr().err
    with pytest.raises(UsageError):
        eval_ensemble.main(
            argv[:4]
            + [
                "--model-paths",
                paths,
                "--ensemble-type",
                "clustering",
                "--job-dir",
                str(tmp_path / "j2"),
                "--batch-tokens",
                "0",
            ]
        )
    for flag, value in (("--temperature", "nan"), ("--temperature", "0"), ("--topk", "0"), ("--topk", "-2")):
        bad = argv[:6] + [
            "--model-paths",
            paths,
            "--ensemble-type",
            "clustering",
            "--job-dir",
            str(tmp_path / "j3"),
            flag,
            value,
        ]
        assert main_wrapper("eval_ensemble", eval_ensemble.main, bad) == 2
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1, err
    del info


@pytest.mark.slow
def test_run_local_scores_experts_as_separate_jobs(tiny, fake_clusterer, tmp_path):
    """--run local: each expert scores in its own submitit job; the mix equals the in-process result."""
    pytest.importorskip("submitit")
    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=40 + k)
    kw = dict(
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=4,
        temperatures=[0.2],
    )
    ref = _eval(tiny, tmp_path / "inproc", **kw)
    res = _eval(tiny, tmp_path / "local", run="local", **kw)  # jobs with their own CPU thread counts
    assert res["result_ppl"] == pytest.approx(ref["result_ppl"], rel=ppl_rel_tol(ref["result_ppl"]))
    assert list((tmp_path / "local" / "jobs").rglob("*_log.out"))  # the jobs really ran through submitit


@pytest.mark.slurm
def test_run_slurm_scores_experts_as_an_array(tiny, fake_clusterer, tmp_path, slurm_cluster, monkeypatch):
    """--run slurm: one SLURM job per expert through the launch API; the mix equals the in-process result."""
    monkeypatch.setenv("XLBTM_SLURM_PARTITION", slurm_cluster.partition)
    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=50 + k)
    kw = dict(
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=4,
        temperatures=[0.2],
    )
    ref = _eval(tiny, tmp_path / "inproc", **kw)
    res = _eval(tiny, tmp_path / "slurm", run="slurm", **kw)  # on another node, with its own thread count
    assert res["result_ppl"] == pytest.approx(ref["result_ppl"], rel=ppl_rel_tol(ref["result_ppl"]))
    metas = [json.loads(p.read_text()) for p in (tmp_path / "slurm" / "scores").glob("*.json")]
    assert sorted(m["name"] for m in metas) == ["expert0", "expert1"]


# --------------------------------------------------------------------------------- real clusterer artifacts


@pytest.fixture(scope="module")
def real_clusterers(tiny, tmp_path_factory):
    from xlbtm.cluster.train import train_tfidf_clusterer

    out = tmp_path_factory.mktemp("clus")
    sub, _ = train_tfidf_clusterer(tiny["data"], 2, out / "subword", tokenizer=tiny["tok"].path, max_docs=120)
    word, _ = train_tfidf_clusterer(tiny["data"], 2, out / "word", featurizer="word", max_docs=120)
    return {"subword": (out / "subword", sub), "word": (out / "word", word)}


def test_incremental_routing_equals_the_clusterers_reference_featurizer(tiny, real_clusterers):
    _, clus = real_clusterers["subword"]
    router = routing.router_from_clusterer(clus, tiny["tok"])
    assert router.incremental
    from xlbtm.corpus import Corpus

    text = next(iter(Corpus(tiny["data"]).iter_documents("valid"))).text
    ids = tiny["tok"].encode(text)[:200]
    got, empty = router.distances(ids)
    ref_h = clus.featurize_token_ids([ids[:j] for j in range(len(ids))])  # every prefix from scratch
    ref = clus.distances(ref_h)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert empty[0] and not empty[-1]
    doc_d, _ = router.document_distances(ids)
    np.testing.assert_allclose(doc_d, clus.distances(clus.featurize_token_ids([ids]))[0], atol=2e-5)
    full, _ = router.document_distances(tiny["tok"].encode(text))
    assert int(full.argmin()) == int(clus.predict([text])[0])  # same rule as the clusterer's assignment


def test_word_clusterer_routes_by_decoding_prefixes(tiny, real_clusterers):
    _, clus = real_clusterers["word"]
    router = routing.router_from_clusterer(clus, tiny["tok"])
    assert not router.incremental
    ids = tiny["tok"].encode("Das ist ein kleiner Test über Wörter und Sätze, the quick brown fox")
    got, _ = router.distances(ids)
    for j in (0, 3, len(ids) - 1):
        ref = clus.distances(clus.transform([tiny["tok"].decode(ids[:j])]))[0]
        np.testing.assert_allclose(got[j], ref, atol=2e-5)


def test_eval_with_real_clusterer_and_fingerprint_check(tiny, real_clusterers, tmp_path):
    cdir, clus = real_clusterers["subword"]
    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=60 + k, fingerprint=clus.fingerprint)
    res = _eval(
        tiny,
        tmp_path / "job",
        ensemble_type="clustering",
        path_to_clusterer=str(cdir),
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=6,
        temperatures=[0.1],
    )
    assert res["settings"]["clusterer_fingerprint"] == clus.fingerprint
    assert sum(v["documents"] for v in res["per_cluster"].values()) == res["documents"]
    wdir, _ = real_clusterers["word"]
    with pytest.raises(InputError, match="another clusterer"):
        _eval(
            tiny,
            tmp_path / "job2",
            ensemble_type="clustering",
            path_to_clusterer=str(wdir),
            experts_dir=str(tmp_path / "ens"),
            max_valid_steps=6,
        )


def test_lang_routing_with_a_real_typological_clusterer(tiny, tmp_path):
    from xlbtm.cluster.train import train_typological_clusterer
    from xlbtm.corpus import Corpus

    langs = sorted({d.lang for d in Corpus(tiny["data"]).iter_documents("valid")})
    clus = train_typological_clusterer(langs, 2, tmp_path / "typo", mode="balanced")
    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=70 + k, fingerprint=clus.fingerprint)
    res = _eval(
        tiny,
        tmp_path / "job",
        ensemble_type="lang",
        path_to_clusterer=str(tmp_path / "typo"),
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=12,
    )
    singles = [
        _eval(
            tiny,
            tmp_path / f"s{k}",
            ensemble_type="dense",
            max_valid_steps=12,
            model_paths=[str(tmp_path / "ens" / f"x.cluster{k}")],
        )
        for k in range(2)
    ]
    for lang, v in res["per_language"].items():
        k = clus.lang_to_cluster[lang]
        assert v["ppl"] == pytest.approx(singles[k]["per_language"][lang]["ppl"], rel=1e-5)
        assert res["top_expert"][str(k)] > 0
    with pytest.raises(UsageError, match="typological"):
        _eval(
            tiny,
            tmp_path / "j2",
            ensemble_type="clustering",
            path_to_clusterer=str(tmp_path / "typo"),
            experts_dir=str(tmp_path / "ens"),
            max_valid_steps=2,
        )


def test_per_language_ppl_is_token_weighted(tiny, fake_clusterer, tmp_path):
    """Per-language (and per-cluster) perplexities are exp(token-mean NLL) of their tokens, so they recombine
    into the overall one: sum_l tokens_l * log(ppl_l) == N * log(ppl). Documents of one language differ in
    length here (79..601 tokens), so a mean over per-document losses would break the identity."""
    from xlbtm.ensemble.report import load_result
    from xlbtm.ensemble.scoring import load_docs, read_scores

    for k in range(2):
        make_expert(tmp_path / "ens" / f"x.cluster{k}", tiny["tok"], k, 2, seed=80 + k)
    job = tmp_path / "job"
    _eval(
        tiny,
        job,
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=12,
        temperatures=[0.5],
    )
    res = load_result(job)  # what result.json says
    docs = load_docs(job)
    lengths = np.diff(docs.offsets)
    assert len(set(docs.langs)) < docs.num_docs  # some language has several documents ...
    assert any(
        len({int(lengths[d]) for d in range(docs.num_docs) if docs.langs[d] == lg}) > 1 for lg in set(docs.langs)
    )  # ... of different lengths
    N = res["tokens"]

    def check(groups, ppl):
        assert sum(v["tokens"] for v in groups.values()) == N
        total = sum(v["tokens"] * math.log(v["ppl"]) for v in groups.values())
        assert total == pytest.approx(N * math.log(ppl), rel=1e-9)

    check(res["per_language"], res["result_ppl"])
    check(res["per_cluster"], res["result_ppl"])
    check(res["oracle"]["per_language"], res["oracle"]["result_ppl"])
    for s in res["sweep"]:
        check(s["per_language"], s["result_ppl"])
    # and each language's ppl is its own tokens' mean NLL (oracle: the best expert's summed log-prob per doc)
    lp = np.stack([read_scores(job, f"expert{k}") for k in range(2)]).astype(np.float64)
    best = np.add.reduceat(lp, docs.offsets[:-1], axis=1).max(0)
    for lg, v in res["oracle"]["per_language"].items():
        sel = [d for d in range(docs.num_docs) if docs.langs[d] == lg]
        assert v["ppl"] == pytest.approx(math.exp(-best[sel].sum() / lengths[sel].sum()), rel=1e-9)


def test_mlm_clustering_routes_by_the_whole_document(tiny, fake_clusterer, tmp_path):
    """MLM experts read the whole unmasked document, so every token of a document is mixed with that
    document's posterior: the router applied to the full document text, not to the prefix before the token."""
    from xlbtm.corpus import Corpus
    from xlbtm.ensemble.scoring import load_docs, read_scores

    # max_positions above the longest of these documents: nothing is truncated, "whole" is unambiguous
    for k in range(2):
        make_expert(
            tmp_path / "ens" / f"m.cluster{k}", tiny["tok"], k, 2, seed=90 + k, objective="mlm", max_positions=640
        )
    job = tmp_path / "job"
    temps = [0.05, 0.5]
    res = _eval(
        tiny,
        job,
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=6,
        temperatures=temps,
    )
    assert res["settings"]["objective"] == "mlm"
    docs = load_docs(job)
    texts = [d.text for d in itertools.islice(Corpus(tiny["data"]).iter_documents("valid"), 6)]
    router = routing.router_from_clusterer(fake_clusterer("C"), tiny["tok"])
    lp = np.stack([read_scores(job, f"expert{k}") for k in range(2)]).astype(np.float64)
    posts = []
    for d, text in enumerate(texts):
        ids = tiny["tok"].encode(text)
        np.testing.assert_array_equal(docs.doc(d), ids)  # scored whole
        sq, empty = router.document_distances(ids)
        assert not empty
        posts.append(sq)
    for T, s in zip(temps, res["sweep"]):
        total = 0.0
        for d, sq in enumerate(posts):
            logw = torch.log_softmax(torch.from_numpy(-sq / T), 0).numpy()
            seg = lp[:, docs.offsets[d] : docs.offsets[d + 1]]
            total += float(np.logaddexp(logw[0] + seg[0], logw[1] + seg[1]).sum())
        assert s["result_ppl"] == pytest.approx(math.exp(-total / lp.shape[1]), rel=1e-9), T


def test_report_labels_say_pseudo_ppl_for_masked_lm_results():
    """result.json keeps c-BTM's `result_ppl` / `ppl` keys; report.md says what they measure."""
    from xlbtm.ensemble.report import render_markdown

    def result(objective):
        return {
            "dataset": "d",
            "ensemble_type": "clustering",
            "result_ppl": 9.5,
            "tokens": 10,
            "documents": 2,
            "settings": {"objective": objective, "num_experts": 2},
            "per_language": {"de": {"ppl": 9.5, "tokens": 10, "documents": 2}},
        }

    mlm = render_markdown(result("mlm"), dense=result("mlm"))
    assert "| dense pseudo-ppl | ensemble pseudo-ppl |" in mlm and "Dense baseline: pseudo-ppl" in mlm
    clm = render_markdown(result("clm"), dense=result("clm"))
    assert "| dense ppl | ensemble ppl |" in clm and "pseudo" not in clm


def _record_training(run_dir: Path, *, steps: int, position: int, checkpoint: bool = True) -> None:
    """What training leaves for the budget: expert.json's config and tokens_per_sample, and the step / sample
    position in the checkpoint's train_state.json (or, `checkpoint=False`, only in train_log.jsonl)."""
    from xlbtm.io import write_json

    info = json.loads((run_dir / "expert.json").read_text())
    info["data"] = {"tokens_per_sample": 64, "config": {"max_steps": steps, "tokens_per_sample": 64}}
    write_json(run_dir / "expert.json", info)
    if checkpoint:
        ck = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
        write_json(ck / "train_state.json", {"format": "xlbtm-checkpoint/1", "step": steps, "position": position})
    else:
        log = [
            {"kind": "train", "step": steps, "position": position, "loss": 5.0},
            {"kind": "valid", "step": steps, "loss": 5.1},
        ]
        (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def test_report_names_cluster_languages_both_budgets_and_the_oracle(tiny, fake_clusterer, tmp_path):
    from xlbtm.ensemble.report import _languages, language_outcomes, outcome_line

    make_expert(tmp_path / "dense", tiny["tok"], 0, 1, seed=5, fingerprint=None)
    _record_training(tmp_path / "dense", steps=20, position=80)
    make_expert(tmp_path / "ens" / "x.cluster0", tiny["tok"], 0, 2, seed=1)
    _record_training(tmp_path / "ens" / "x.cluster0", steps=10, position=40)
    # a consolidated.pt without checkpoints: the budget comes from its train_log.jsonl
    make_expert(tmp_path / "ens" / "x.cluster1", tiny["tok"], 1, 2, seed=2, consolidated=True)
    _record_training(tmp_path / "ens" / "x.cluster1", steps=10, position=40, checkpoint=False)
    dense = _eval(
        tiny, tmp_path / "jd", ensemble_type="dense", model_paths=[str(tmp_path / "dense")], max_valid_steps=8
    )
    assert dense["settings"]["budget"]["steps"] == 20 and dense["settings"]["budget"]["tokens"] == 80 * 64
    res = _eval(
        tiny,
        tmp_path / "je",
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(tmp_path / "ens"),
        max_valid_steps=8,
        dense_result=str(tmp_path / "jd"),
    )
    budget = res["settings"]["budget"]
    assert (budget["steps"], budget["tokens"]) == (20, 2 * 40 * 64)
    assert [(m["cluster"], m["steps"], m["source"]) for m in budget["models"]] == [
        (0, 10, "checkpoint"),
        (1, 10, "train_log"),
    ]
    # each cluster's documents per language, adding up to the cluster's and to each language's documents
    clusters = res["per_cluster"]
    assert clusters and all(sum(v["languages"].values()) == v["documents"] for v in clusters.values())
    for lang, v in res["per_language"].items():
        assert sum(c["languages"].get(lang, 0) for c in clusters.values()) == v["documents"]
    md = (tmp_path / "je" / "report.md").read_text()
    assert "- ensemble: 2 experts, 20 steps in all (10, 10 per expert), 5.1k training tokens (2.6k, 2.6k)" in md
    assert "- dense: 20 steps, 5.1k training tokens" in md
    for k, v in clusters.items():
        assert f"| {k} | {_languages(v['languages'])} | {v['documents']} |" in md
    assert "| dense ppl | ensemble ppl | change | oracle ppl | oracle change |" in md
    assert outcome_line(language_outcomes(res, dense)) in md


def _lang_results():
    """A hand-made ensemble result and its dense baseline: de better, fr tied (+0.04%), it worse (+1%)."""
    per = {"de": 19.0, "fr": 10.004, "it": 30.3}
    dense_per = {"de": 20.0, "fr": 10.0, "it": 30.0}

    def langs(ppls):
        return {k: {"ppl": v, "tokens": 10, "documents": 2} for k, v in ppls.items()}

    result = {
        "dataset": "valid",
        "ensemble_type": "clustering",
        "result_ppl": 19.5,
        "tokens": 30,
        "documents": 6,
        "settings": {"objective": "clm", "num_experts": 2},
        "per_language": langs(per),
        "oracle": {"result_ppl": 18.25, "per_language": langs({"de": 18.0, "fr": 9.0, "it": 29.0})},
    }
    dense = {"dataset": "valid", "ensemble_type": "dense", "result_ppl": 20.0, "per_language": langs(dense_per)}
    return result, dense


def test_a_tie_at_the_precision_shown_is_not_a_loss():
    from xlbtm.ensemble.report import compare_ppl, render_markdown

    assert compare_ppl(10.004, 10.0) == "tied" and compare_ppl(9.996, 10.0) == "tied"  # rounds to 0.0%
    assert compare_ppl(10.006, 10.0) == "worse" and compare_ppl(9.994, 10.0) == "better"  # rounds to 0.1%
    result, dense = _lang_results()
    md = render_markdown(result, dense)
    assert "the ensemble is better in 1, tied in 1, worse in 1 of 3 languages" in md
    assert "| fr | 2 | 10 | 10.000 | 10.004 | 0.0% | 9.000 | -10.0% |" in md
    assert "| de | 2 | 10 | 20.000 | 19.000 | -5.0% | 18.000 | -10.0% |" in md
    # the dense result carries no budget (written before budgets were recorded): said, not guessed
    assert "- dense: not recorded" in md


def test_plot_shows_relative_change_with_labels_and_the_overall_numbers(tmp_path):
    import matplotlib.image
    import matplotlib.pyplot as plt

    from xlbtm.ensemble.report import language_figure, plot_languages

    result, dense = _lang_results()
    fig = language_figure(result, dense)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "language" and ax.get_ylabel() == "% change in ppl vs dense (lower is better)"
    title = ax.get_title()
    assert "ppl 19.500 vs dense 20.000 (-2.5%), oracle 18.250" in title
    assert "better in 1, tied in 1, worse in 1 of 3 languages" in title
    labels = ax.get_legend_handles_labels()[1]
    assert any(lb.startswith("oracle") for lb in labels) and any(lb.startswith("dense") for lb in labels)
    heights = [round(b.get_height(), 6) for b in ax.patches]  # ensemble's then oracle's bars, in % vs dense
    assert heights == [-5.0, 0.04, 1.0, -10.0, -10.0, round(100 * (29 - 30) / 30, 6)]
    plt.close(fig)
    # without a dense result: perplexity on a log axis
    fig = language_figure(result)
    assert fig.axes[0].get_yscale() == "log" and "log scale" in fig.axes[0].get_ylabel()
    plt.close(fig)
    plot_languages(tmp_path / "p.png", result, dense)
    img = matplotlib.image.imread(tmp_path / "p.png")
    assert img.ndim == 3 and img.shape[0] > 100
