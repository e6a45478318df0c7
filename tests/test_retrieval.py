"""Cross-lingual retrieval of encoder experts (eval_ensemble --parallel-data): pools, accuracy@1, pooling,
ensemble weighting, errors, and the result.json / report.md section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_ensemble import FakeSubwordClusterer, FakeTypological, make_expert, tiny  # noqa: F401  (tiny: fixture)

from xlbtm.ensemble import retrieval

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

N_MEANINGS = 6


def write_parallel(root, langs=("de", "fr"), n=N_MEANINGS, split="valid", extra: dict | None = None):
    """<root>/<split>/00000/<lang>.jsonl, English -> lang; pair m of every language means m (the last word)."""
    d = root / split / "00000"
    d.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        lines = [
            json.dumps(
                {"src": f"the house number {m}", "tgt": f"{lang} haus nummer {m}", "src_lang": "en", "tgt_lang": lang}
            )
            for m in range(n)
        ]
        lines += (extra or {}).get(lang, [])
        (d / f"{lang}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _meaning(text: str) -> int:
    return int(text.rsplit(" ", 1)[1])


def _one_hot(m, n=N_MEANINGS):
    v = np.zeros(n, dtype=np.float32)
    v[m % n] = 1.0
    return v


@pytest.fixture
def fake_vectors(monkeypatch):
    """A constructed encoder: expert `name` maps meaning m to a unit vector of the table `maps[name]` gives
    (src side) and `maps[name + ':tgt']` (tgt side; default the same), so every similarity is known exactly."""
    maps = {}

    def vectors(job_dir, name, expert, ps, **kw):
        fs = maps.get(name, maps.get("*"))
        ft = maps.get(name + ":tgt", fs)
        src = np.stack([fs(p.src_lang, _meaning(p.src)) for p in ps.pairs])
        tgt = np.stack([ft(p.tgt_lang, _meaning(p.tgt)) for p in ps.pairs])
        norm = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
        return norm(src), norm(tgt)

    monkeypatch.setattr(retrieval, "expert_vectors", vectors)
    return maps


def _eval(tiny, job, **kw):
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval

    kw.setdefault("data_dir", str(tiny["data"]))
    kw.setdefault("data_subset", "valid")
    kw.setdefault("max_valid_steps", 3)
    kw.setdefault("retrieval_centering", "none")  # the constructed encoders set raw cosines by hand
    return run_eval(EvalConfig(job_dir=str(job), **kw))


@pytest.fixture(scope="module")
def mlm(tiny, tmp_path_factory):
    """One dense MLM model and a K=2 MLM ensemble (typological fingerprint fits both fake clusterers)."""
    root = tmp_path_factory.mktemp("ret")
    make_expert(root / "dense", tiny["tok"], 0, 1, seed=3, fingerprint=None, objective="mlm")
    for k in range(2):
        make_expert(
            root / "ens" / f"m.cluster{k}", tiny["tok"], k, 2, seed=40 + k, objective="mlm", fingerprint="fp-test"
        )
    return root


@pytest.fixture
def clusterers(monkeypatch, tiny):
    import xlbtm.ensemble.evaluate as ev

    made = {
        "C": FakeSubwordClusterer(tiny["tok"].vocab_size, 2, fingerprint="fp-test"),
        "typo": FakeTypological({"de": 1}, fingerprint="fp-test"),
    }
    monkeypatch.setattr(ev, "_load_clusterer", lambda path: made[path])
    return made


# ------------------------------------------------------------------------------------------ by hand


def test_pool_hits_known_answers_ties_and_duplicates():
    e = np.eye(3, dtype=np.float32)
    src = e.copy()
    tgt = np.stack([e[0], 0.6 * e[1] + 0.8 * e[2], e[2]])  # tgt 1 sits nearer src 2 than its own src 1
    t2s, s2t = retrieval.pool_hits(src, tgt)
    assert t2s.tolist() == [True, False, True]
    # src 1's nearest target is tgt 1 (0.6 vs 0): a hit; src 2 has tgt 2 (1.0) beating tgt 1 (0.8): a hit
    assert s2t.tolist() == [True, True, True]
    # a tie is a miss: a representation mapping everything to one vector scores 0, not 1/B
    same = np.tile(e[:1], (3, 1))
    assert not retrieval.pool_hits(same, same)[0].any()
    # ... unless the tied candidate is the same sentence: retrieving an identical copy is no error
    t2s, _ = retrieval.pool_hits(same, same, src_text=["a", "a", "a"])
    assert t2s.all()


def test_pools_split_each_language_into_near_equal_blocks():
    langs = ["de"] * 5 + ["fr"] * 2 + ["de"] * 2
    got = [(lg, b.tolist()) for lg, b in retrieval.pools(langs, 3)]
    # de: 7 pairs -> ceil(7 / 3) = 3 blocks of 3, 2, 2 in file order; fr: 2 pairs, one block
    assert got == [("de", [0, 1, 2]), ("de", [3, 4]), ("de", [7, 8]), ("fr", [5, 6])]


def test_embed_mean_pools_the_text_tokens_of_each_sentence_alone(tiny, mlm):
    """Batched, padded embedding == each `<s> text </s>` through the encoder alone, averaged over the text
    positions only (a pooling that kept the specials or the padding would differ)."""
    from xlbtm.ensemble.experts import load_model, read_expert

    model, args = load_model(read_expert(mlm / "dense"))
    ids = [
        x[:40]
        for x in tiny["tok"].encode_batch(["the house number 1", "a longer sentence about the house " * 3, "x", ""])
    ]
    assert len({len(x) for x in ids}) == 4 and ids[-1] == []  # padding differs per row; one empty text
    got = retrieval.embed(model, args, ids, batch_tokens=64)
    for x, v in zip(ids, got):
        inp = torch.tensor([[args.bos_id, *x, args.eos_id]])
        with torch.no_grad():
            h = model.forward_hidden(inp)[0]
        ref = (h[1:-1] if x else h).mean(0)
        np.testing.assert_allclose(v, (ref / ref.norm()).numpy(), rtol=1e-4, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------ end to end


def test_constructed_encoder_per_language_accuracy_and_pools(tiny, mlm, fake_vectors, tmp_path):
    """dense: German target 3 is built nearer source 4 than its own source; pools of 3 put them together
    (a miss), pools of 2 ({2, 3}, {4, 5}) keep them apart (a hit)."""
    par = write_parallel(tmp_path / "par")

    def tgt_vec(lang, m):
        return 0.6 * _one_hot(3) + 0.8 * _one_hot(4) if (lang, m) == ("de", 3) else _one_hot(m)

    fake_vectors["dense"] = lambda lang, m: _one_hot(m)
    fake_vectors["dense:tgt"] = tgt_vec
    kw = dict(ensemble_type="dense", model_paths=[str(mlm / "dense")], parallel_data=str(par))
    r3 = _eval(tiny, tmp_path / "j3", retrieval_batch_size=3, **kw)["retrieval"]
    assert r3["per_language"]["de"] == {"accuracy": 5 / 6, "src2tgt": 1.0, "pairs": 6, "pools": 2, "chance": 1 / 3}
    assert r3["per_language"]["fr"]["accuracy"] == 1.0
    assert r3["accuracy"] == pytest.approx(11 / 12) and r3["pairs"] == 12 and r3["experts"] is None
    r2 = _eval(tiny, tmp_path / "j2", retrieval_batch_size=2, **kw)["retrieval"]
    assert r2["per_language"]["de"]["accuracy"] == 1.0 and r2["per_language"]["de"]["pools"] == 3
    r1 = _eval(tiny, tmp_path / "jm", retrieval_batch_size=3, retrieval_max_pairs=3, **kw)["retrieval"]
    assert r1["pairs"] == 6 and r1["accuracy"] == 1.0  # pairs 0..2 of each language only


def test_each_side_is_routed_by_its_own_language(tiny, mlm, clusterers, fake_vectors, tmp_path):
    """--retrieval-routing own, lang: English sources go to expert 0, German targets to expert 1, French ones to
    expert 0. Expert 1 is built to place meaning m where expert 0 places m + 1, so German retrieval through the
    ensemble finds the wrong source every time while French is perfect; the uniform mixture recovers German."""
    par = write_parallel(tmp_path / "par")
    fake_vectors["expert0"] = lambda lang, m: _one_hot(m)
    fake_vectors["expert1"] = lambda lang, m: _one_hot(m + 1)
    kw = dict(experts_dir=str(mlm / "ens"), parallel_data=str(par), retrieval_batch_size=10, retrieval_routing="own")
    lang = _eval(tiny, tmp_path / "l", ensemble_type="lang", path_to_clusterer="typo", **kw)["retrieval"]
    assert lang["per_language"]["de"]["accuracy"] == 0.0 and lang["per_language"]["fr"]["accuracy"] == 1.0
    assert lang["experts"] == {str(k): {"accuracy": 1.0, "per_language": {"de": 1.0, "fr": 1.0}} for k in (0, 1)}
    uni = _eval(tiny, tmp_path / "u", ensemble_type="uniform", **kw)["retrieval"]
    assert uni["accuracy"] == 1.0
    # expert 1 switched off: German targets have no expert of their own -> the remaining one (expert 0)
    ex = _eval(tiny, tmp_path / "x", ensemble_type="lang", path_to_clusterer="typo", exclude_experts=[1], **kw)[
        "retrieval"
    ]
    assert ex["accuracy"] == 1.0 and ex["experts"] is None


def test_target_routing_reads_both_sides_with_the_target_languages_expert(
    tiny, mlm, clusterers, fake_vectors, tmp_path
):
    """The default --retrieval-routing target reads a pair's both sides with its target side's experts. Expert 0
    places every meaning m at m + 1 (a space of its own, consistent across languages), expert 1 at m. lang
    routing sends English to expert 0, German to expert 1, French to expert 0: target routing reads German pairs
    with expert 1 and French with expert 0 (both consistent, all found); own routing reads German targets with
    expert 1 but their English sources with expert 0, whose spaces disagree (none found)."""
    par = write_parallel(tmp_path / "par")
    fake_vectors["expert0"] = lambda lang, m: _one_hot((m + 1) % 10)
    fake_vectors["expert1"] = lambda lang, m: _one_hot(m)
    kw = dict(
        experts_dir=str(mlm / "ens"),
        parallel_data=str(par),
        retrieval_batch_size=10,
        ensemble_type="lang",
        path_to_clusterer="typo",
    )
    tgt = _eval(tiny, tmp_path / "t", **kw)["retrieval"]
    assert tgt["per_language"]["de"]["accuracy"] == 1.0 and tgt["per_language"]["fr"]["accuracy"] == 1.0
    assert tgt["settings"]["routing"] == "target"
    own = _eval(tiny, tmp_path / "o", retrieval_routing="own", **kw)["retrieval"]
    assert own["per_language"]["de"]["accuracy"] == 0.0 and own["per_language"]["fr"]["accuracy"] == 1.0


@pytest.mark.parametrize("routing, centering", [("target", "pool"), ("own", "none")])
def test_clustering_ensemble_vectors_equal_a_brute_force_reference(tiny, mlm, clusterers, tmp_path, routing, centering):
    """Real tiny encoders: every sentence's ensemble vector recomputed one sentence at a time (plain forward,
    mean pool, the router's whole-sentence posterior, softmax(-d/T), weighted sum, normalize), and the
    accuracy@1 recounted pair by pair, for every --temperature of the sweep."""
    from xlbtm.ensemble.experts import load_model, read_expert
    from xlbtm.ensemble.routing import router_from_clusterer

    par = write_parallel(tmp_path / "par", n=5)
    temps = [0.05, 1.0]
    res = _eval(
        tiny,
        tmp_path / "job",
        ensemble_type="clustering",
        path_to_clusterer="C",
        experts_dir=str(mlm / "ens"),
        parallel_data=str(par),
        retrieval_batch_size=5,
        temperatures=temps,
        retrieval_routing=routing,
        retrieval_centering=centering,
    )
    tok = tiny["tok"]
    models = [load_model(read_expert(mlm / "ens" / f"m.cluster{k}")) for k in range(2)]
    router = router_from_clusterer(clusterers["C"], tok)
    lines = [json.loads(x) for lang in ("de", "fr") for x in (par / "valid/00000" / f"{lang}.jsonl").open()]

    def vec(text, T, routed_by):
        ids = tok.encode(text)
        sq, empty = router.document_distances(tok.encode(routed_by))
        w = np.full(2, 0.5) if empty else np.exp(-sq / T) / np.exp(-sq / T).sum()
        out = 0
        for k, (model, args) in enumerate(models):
            with torch.no_grad():
                h = model.forward_hidden(torch.tensor([[args.bos_id, *ids, args.eos_id]]))[0, 1:-1].mean(0)
            out = out + w[k] * (h / h.norm()).double().numpy()
        return out / np.linalg.norm(out)

    for T, s in zip(temps, res["sweep"]):
        hits = {}
        for lang in ("de", "fr"):
            rows = [x for x in lines if x["tgt_lang"] == lang]
            S = [vec(x["src"], T, x["tgt" if routing == "target" else "src"]) for x in rows]
            U = [vec(x["tgt"], T, x["tgt"]) for x in rows]
            if centering == "pool":  # one pool per language here: center each side on its mean, renormalize
                S, U = ([v / np.linalg.norm(v) for v in np.asarray(side) - np.mean(side, 0)] for side in (S, U))
            for i, _x in enumerate(rows):
                t = U[i]
                sims = [float(t @ v) for v in S]
                hits.setdefault(lang, []).append(all(sims[i] > sims[j] for j in range(len(S)) if j != i))
        if T == temps[0]:
            for lang, h in hits.items():
                assert res["retrieval"]["per_language"][lang]["accuracy"] == pytest.approx(np.mean(h)), lang
        assert s["retrieval"] == pytest.approx(np.mean(sum(hits.values(), []))), T


def test_centering_removes_the_direction_a_pool_shares(tiny, mlm, fake_vectors, tmp_path):
    """Every vector carries one big shared direction (as trained encoders' mean-pooled states do) and its
    meaning; even sources also a nuisance direction. Raw cosines are then decided by the norms: an even target
    finds an odd source (100 / sqrt(101) > 101 / sqrt(110)), so half the pairs are missed. Centered on the
    pool, the shared direction is gone and every target's own source is the only positive match."""
    par = write_parallel(tmp_path / "par")
    dim = N_MEANINGS + 2
    big, nuisance = 10 * _one_hot(N_MEANINGS, dim), _one_hot(N_MEANINGS + 1, dim)
    fake_vectors["dense"] = lambda lang, m: big + _one_hot(m, dim) + (3 * nuisance if m % 2 == 0 else 0)
    fake_vectors["dense:tgt"] = lambda lang, m: big + _one_hot(m, dim)
    kw = dict(ensemble_type="dense", model_paths=[str(mlm / "dense")], parallel_data=str(par), retrieval_batch_size=10)
    raw = _eval(tiny, tmp_path / "raw", **kw)["retrieval"]
    cen = _eval(tiny, tmp_path / "cen", retrieval_centering="pool", **kw)["retrieval"]
    assert raw["accuracy"] == 0.5 and "uncentered" not in raw
    assert cen["accuracy"] == 1.0 and cen["uncentered"]["accuracy"] == 0.5 and cen["settings"]["centering"] == "pool"


def test_mixed_vectors_are_the_weighted_sum_renormalized():
    rng = np.random.default_rng(0)
    V = rng.standard_normal((3, 4, 5))
    V /= np.linalg.norm(V, axis=2, keepdims=True)
    W = rng.random((4, 3))
    W /= W.sum(1, keepdims=True)
    got = retrieval.mix_vectors(V, W)
    for n in range(4):
        ref = sum(W[n, k] * V[k, n] for k in range(3))
        np.testing.assert_allclose(got[n], ref / np.linalg.norm(ref), rtol=1e-5)


# ------------------------------------------------------------------------------------------ script


def _argv(tiny, job, *extra):
    return ["--data-dir", str(tiny["data"]), "--max-valid-steps", "3", "--job-dir", str(job), *extra]


def test_result_and_report_hold_retrieval_beside_dense_and_default_is_unchanged(
    tiny, mlm, clusterers, tmp_path, capsys
):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import eval_ensemble

    par = write_parallel(tmp_path / "par")
    dense = ["--ensemble-type", "dense", "--model-paths", str(mlm / "dense")]
    pflags = ["--parallel-data", str(par), "--retrieval-batch-size", "4"]
    assert main_wrapper("eval_ensemble", eval_ensemble.main, _argv(tiny, tmp_path / "plain", *dense)) == 0
    assert main_wrapper("eval_ensemble", eval_ensemble.main, _argv(tiny, tmp_path / "d", *dense, *pflags)) == 0
    assert "retrieval accuracy@1" in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    withr = json.loads((tmp_path / "d" / "result.json").read_text())
    # without --parallel-data nothing changes: no key, no section, the same numbers
    assert "retrieval" not in plain and all("retrieval" not in s for s in plain["sweep"])
    assert "retrieval" not in (tmp_path / "plain" / "report.md").read_text().lower()
    r = withr.pop("retrieval")
    for s in withr["sweep"]:
        s.pop("retrieval")
    assert withr == plain
    assert set(r["per_language"]) == {"de", "fr"} and r["pairs"] == 12
    assert r["per_language"]["de"]["pools"] == 2 and r["per_language"]["de"]["chance"] == pytest.approx(1 / 3)
    md = (tmp_path / "d" / "report.md").read_text()
    assert "## Cross-lingual retrieval (accuracy@1)" in md and "| de | 6 | 2 |" in md

    ens = ["--ensemble-type", "uniform", "--experts-dir", str(mlm / "ens"), "--dense-result", str(tmp_path / "d")]
    assert main_wrapper("eval_ensemble", eval_ensemble.main, _argv(tiny, tmp_path / "e", *ens, *pflags)) == 0
    e = json.loads((tmp_path / "e" / "result.json").read_text())
    assert set(e["retrieval"]["experts"]) == {"0", "1"}
    md = (tmp_path / "e" / "report.md").read_text()
    assert "dense tgt->src" in md and "ensemble tgt->src" in md and "Each expert alone" in md
    de = f"| de | 6 | 0.333 | {r['per_language']['de']['accuracy']:.3f} | {e['retrieval']['per_language']['de']['accuracy']:.3f} |"
    assert de in md
    assert "Not comparable" not in md
    # another pool than the dense run's: the report says the numbers cannot be compared
    assert main_wrapper("eval_ensemble", eval_ensemble.main, _argv(tiny, tmp_path / "e2", *ens, *pflags[:2])) == 0
    assert "**Not comparable**" in (tmp_path / "e2" / "report.md").read_text()
    # raw cosines against the dense run's centered ones: not comparable either
    assert (
        main_wrapper(
            "eval_ensemble",
            eval_ensemble.main,
            _argv(tiny, tmp_path / "e3", *ens, *pflags, "--retrieval-centering", "none"),
        )
        == 0
    )
    assert "centering pool vs none" in (tmp_path / "e3" / "report.md").read_text()
    # sentence vectors are cached per expert in the job dir: a rerun reads them instead of embedding again
    cache = tmp_path / "e" / "embeddings" / "expert0.npz"
    before = cache.stat().st_mtime_ns
    assert main_wrapper("eval_ensemble", eval_ensemble.main, _argv(tiny, tmp_path / "e", *ens, *pflags)) == 0
    assert cache.stat().st_mtime_ns == before
    assert json.loads((tmp_path / "e" / "result.json").read_text())["retrieval"] == e["retrieval"]


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"src": "a", "tgt_lang": "de"}', "tgt"),
        ("{not json", "JSON"),
        ('{"src": "a", "tgt": "   "}', "empty"),
        ('{"text": "monolingual", "lang": "de"}', "src"),
    ],
)
def test_bad_parallel_lines_name_file_and_line_exit_2(tiny, mlm, tmp_path, capsys, line, why):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import eval_ensemble

    par = write_parallel(tmp_path / "par", extra={"fr": [line]})
    argv = _argv(
        tiny,
        tmp_path / "j",
        "--ensemble-type",
        "dense",
        "--model-paths",
        str(mlm / "dense"),
        "--parallel-data",
        str(par),
    )
    assert main_wrapper("eval_ensemble", eval_ensemble.main, argv) == 2
    err = capsys.readouterr().err
    assert f"valid/00000/fr.jsonl:{N_MEANINGS + 1}:" in err and why in err, err
    assert not (tmp_path / "j" / "result.json").exists()
    # --skip-bad-lines reads past it
    assert main_wrapper("eval_ensemble", eval_ensemble.main, argv + ["--skip-bad-lines"]) == 0
    res = json.loads((tmp_path / "j" / "result.json").read_text())
    assert res["retrieval"]["per_language"]["fr"]["pairs"] == N_MEANINGS


def test_refusals_exit_2_with_one_line(tiny, mlm, clusterers, tmp_path, capsys):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import eval_ensemble

    par = write_parallel(tmp_path / "par")
    make_expert(tmp_path / "clm", tiny["tok"], 0, 1, seed=1, fingerprint=None)
    cases = [
        (
            ["--ensemble-type", "dense", "--model-paths", str(tmp_path / "clm"), "--parallel-data", str(par)],
            "--parallel-data",
        ),
        (
            ["--ensemble-type", "oracle", "--experts-dir", str(mlm / "ens"), "--parallel-data", str(par)],
            "--parallel-data",
        ),
        (
            [
                "--ensemble-type",
                "dense",
                "--model-paths",
                str(mlm / "dense"),
                "--parallel-data",
                str(par),
                "--retrieval-batch-size",
                "1",
            ],
            "--retrieval-batch-size",
        ),
        (
            [
                "--ensemble-type",
                "dense",
                "--model-paths",
                str(mlm / "dense"),
                "--parallel-data",
                str(tmp_path / "missing"),
            ],
            "--parallel-data",
        ),
        (
            [
                "--ensemble-type",
                "dense",
                "--model-paths",
                str(mlm / "dense"),
                "--parallel-data",
                str(par),
                "--parallel-subset",
                "test",
            ],
            "split 'test'",
        ),
    ]
    for extra, msg in cases:
        job = tmp_path / "job"
        assert main_wrapper("eval_ensemble", eval_ensemble.main, _argv(tiny, job, *extra)) == 2, extra
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
        assert not (job / "result.json").exists() and not (job / "scores").exists()
