"""eval_ensemble --exclude-experts: switching experts off (data opt-out) equals an ensemble built without them."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from test_ensemble import FakeSubwordClusterer, FakeTypological, make_expert, tiny  # noqa: F401  (tiny: fixture)

from xlbtm.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _eval(tiny, job, **kw):
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval

    return run_eval(EvalConfig(data_dir=str(tiny["data"]), data_subset="valid", job_dir=str(job), **kw))


@pytest.fixture
def clusterers(monkeypatch, tiny):
    """ "C3": a K=3 subword clusterer; "C2": the same clusterer with centroid 1 removed (the ensemble that
    never had expert 1); "typo": a typological one sending de -> 1, ru -> 2, the rest -> 0."""
    import xlbtm.ensemble.evaluate as ev

    full = FakeSubwordClusterer(tiny["tok"].vocab_size, 3, fingerprint="fp-3")
    reduced = FakeSubwordClusterer(tiny["tok"].vocab_size, 3, fingerprint="fp-2")
    reduced.centroids, reduced.num_clusters = full.centroids[[0, 2]], 2
    made = {"C3": full, "C2": reduced, "typo": FakeTypological({"de": 1, "ru": 2}, fingerprint="fp-typo")}
    monkeypatch.setattr(ev, "_load_clusterer", made.__getitem__)
    return made


def _build(tiny, root, fingerprint, K=3):
    """K experts of different weights; returns their state dicts by cluster."""
    states = {}
    for k in range(K):
        model, _ = make_expert(root / f"x.cluster{k}", tiny["tok"], k, K, seed=60 + k, fingerprint=fingerprint)
        states[k] = model.state_dict()
    return states


def test_excluding_an_expert_equals_an_ensemble_built_without_it(tiny, clusterers, tmp_path):
    full = tmp_path / "full"
    states = _build(tiny, full, "fp-3")
    ref_dir = tmp_path / "without1"  # experts 0 and 2 as clusters 0 and 1 of a K=2 ensemble
    for k, src in enumerate((0, 2)):
        make_expert(ref_dir / f"x.cluster{k}", tiny["tok"], k, 2, seed=0, fingerprint="fp-2", state=states[src])
    kw = dict(max_valid_steps=8, temperatures=[0.05, 0.5], topks=[-1, 1])
    everything = _eval(
        tiny, tmp_path / "j_all", ensemble_type="clustering", path_to_clusterer="C3", experts_dir=str(full), **kw
    )
    shutil.rmtree(full / "x.cluster1")  # opted out: the expert's run dir is gone
    excl = _eval(
        tiny,
        tmp_path / "j_excl",
        ensemble_type="clustering",
        path_to_clusterer="C3",
        experts_dir=str(full),
        exclude_experts=[1],
        **kw,
    )
    ref = _eval(
        tiny, tmp_path / "j_ref", ensemble_type="clustering", path_to_clusterer="C2", experts_dir=str(ref_dir), **kw
    )
    assert excl["tokens"] == ref["tokens"]
    for a, b in zip(excl["sweep"], ref["sweep"], strict=True):
        assert a["result_ppl"] == pytest.approx(b["result_ppl"], rel=1e-9), (a["temperature"], a["topk"])
        for lang, v in b["per_language"].items():
            assert a["per_language"][lang]["ppl"] == pytest.approx(v["ppl"], rel=1e-9)
    # the excluded expert mattered (so the comparison above can fail), and the mixture without it is the
    # renormalized one: dropping expert 1's term without renormalizing gives a strictly worse ppl
    assert excl["result_ppl"] != pytest.approx(everything["result_ppl"], rel=1e-4)
    assert _unrenormalized_ppl(tmp_path / "j_all", 0.05) > excl["sweep"][0]["result_ppl"] * (1 + 1e-6)
    s = excl["settings"]
    assert s["excluded_experts"] == [1] and s["num_experts"] == 2 and everything["settings"]["excluded_experts"] == []
    assert not (tmp_path / "j_excl" / "scores" / "expert1.npz").exists()  # not scored
    assert set(excl["top_expert"]) == {"0", "2"}  # reported under cluster ids, not row positions
    assert excl["top_expert"]["2"] == pytest.approx(ref["top_expert"]["1"])
    assert "Excluded experts" in (tmp_path / "j_excl" / "report.md").read_text()
    for et in ("uniform", "oracle", "average"):  # the other mixtures are over the remaining experts too
        a = _eval(
            tiny, tmp_path / f"e_{et}", ensemble_type=et, experts_dir=str(full), exclude_experts=[1], max_valid_steps=8
        )
        b = _eval(tiny, tmp_path / f"r_{et}", ensemble_type=et, experts_dir=str(ref_dir), max_valid_steps=8)
        assert a["result_ppl"] == pytest.approx(b["result_ppl"], rel=1e-9), et


def _unrenormalized_ppl(job, T):
    """The wrong answer: K=3 weights with expert 1's share simply dropped (columns no longer sum to 1)."""
    from xlbtm.ensemble.scoring import read_scores

    route = np.load(job / "routing.npz")
    z = -route["token_sqdist"] / T
    w = np.exp(z - z.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    w[route["token_empty"]] = 1 / 3
    lp = np.stack([read_scores(job, f"expert{k}") for k in (0, 2)]).astype(np.float64)
    mixed = np.log((w[:, [0, 2]].T * np.exp(lp)).sum(0))
    return math.exp(-mixed.mean())


def test_lang_routing_gives_documents_of_an_excluded_language_the_uniform_mixture(tiny, clusterers, tmp_path):
    from xlbtm.ensemble.scoring import load_docs, read_scores

    ens = tmp_path / "ens"
    _build(tiny, ens, "fp-typo")
    job = tmp_path / "j"
    res = _eval(tiny, job, ensemble_type="lang", path_to_clusterer="typo", experts_dir=str(ens), exclude_experts=[1])
    docs = load_docs(job)
    lp = {k: read_scores(job, f"expert{k}").astype(np.float64) for k in (0, 2)}
    langs = np.repeat(np.asarray(docs.langs), np.diff(docs.offsets))
    assert "de" in langs and "ru" in langs
    for lang in set(docs.langs):
        sel = langs == lang
        if lang == "de":  # expert 1 is off: half expert 0, half expert 2
            mixed = np.logaddexp(lp[0][sel], lp[2][sel]) - math.log(2)
        else:
            mixed = lp[2 if lang == "ru" else 0][sel]
        assert res["per_language"][lang]["ppl"] == pytest.approx(math.exp(-mixed.mean()), rel=1e-9), lang
    assert set(res["top_expert"]) == {"0", "2"}
    # the lead expert's shares leave out the de tokens, which no single expert leads
    assert sum(res["top_expert"].values()) == pytest.approx(1 - (langs == "de").mean())


def test_exclude_experts_errors(tiny, clusterers, tmp_path, capsys):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import eval_ensemble

    ens = tmp_path / "ens"
    _build(tiny, ens, "fp-3")
    for bad, needle in (([0, 1, 2], "leaves no expert"), ([3], "no cluster [3]"), ([-1], "no cluster [-1]")):
        with pytest.raises(UsageError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            _eval(tiny, tmp_path / "j", ensemble_type="uniform", experts_dir=str(ens), exclude_experts=bad)
    with pytest.raises(UsageError, match="dense"):
        _eval(tiny, tmp_path / "j", ensemble_type="dense", model_paths=[str(ens / "x.cluster0")], exclude_experts=[0])
    base = [
        "--data-dir",
        str(tiny["data"]),
        "--experts-dir",
        str(ens),
        "--ensemble-type",
        "uniform",
        "--max-valid-steps",
        "2",
        "--job-dir",
        str(tmp_path / "js"),
    ]
    for value in ("0,1,2", "7"):
        assert main_wrapper("eval_ensemble", eval_ensemble.main, base + ["--exclude-experts", value]) == 2
        err = capsys.readouterr().err
        assert "--exclude-experts" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:  # argparse: usage + one error line
        eval_ensemble.main(base + ["--exclude-experts", "a,b"])
    assert e.value.code == 2 and "--exclude-experts: expected comma-separated cluster ids" in capsys.readouterr().err
    assert main_wrapper("eval_ensemble", eval_ensemble.main, base + ["--exclude-experts", "2,0"]) == 0
    # an expert that never trained (its cluster had no documents) points at the way out
    shutil.rmtree(ens / "x.cluster2")
    assert main_wrapper("eval_ensemble", eval_ensemble.main, base) == 2
    assert "--exclude-experts 2" in capsys.readouterr().err
    for f in (ens / "x.cluster1").iterdir():  # run dir kept, weights never saved
        if f.name != "expert.json":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    assert main_wrapper("eval_ensemble", eval_ensemble.main, base + ["--exclude-experts", "2"]) == 2
    assert "--exclude-experts 1" in capsys.readouterr().err
    res = json.loads((tmp_path / "js" / "result.json").read_text())
    assert res["settings"]["excluded_experts"] == [0, 2] and res["settings"]["num_experts"] == 1
