"""Merging experts by parameter averaging (xlbtm.ensemble.merge, merge_experts): exactness of the average,
posterior weights against a brute-force computation, the output as an expert of its own, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_ensemble import make_expert, tiny  # noqa: F401  (tiny is a fixture)
from tolerance import fp_tol

from xlbtm.errors import InputError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _merge(argv):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import merge_experts

    return main_wrapper("merge_experts", merge_experts.main, [str(a) for a in argv])


def _experts(tiny, root, seeds, **kw):
    """K = len(seeds) experts of one ensemble (one seed model, different weights) under root/ens."""
    models = [
        make_expert(root / "ens" / f"x.cluster{k}", tiny["tok"], k, len(seeds), seed=s, **kw)[0]
        for k, s in enumerate(seeds)
    ]
    return root / "ens", models


def _state(path):
    from xlbtm.formats.consolidated import load_consolidated

    return load_consolidated(path)[0]


def test_merge_of_one_expert_with_weight_one_is_that_expert_bitwise(tiny, tmp_path):
    from xlbtm.ensemble.experts import load_state, read_expert
    from xlbtm.formats.consolidated import save_consolidated
    from xlbtm.models import ModelArgs

    ens, _ = _experts(tiny, tmp_path, [1, 2])
    assert _merge(["--experts-dir", ens, "--experts", "1", "--weights", "1", "--output-dir", tmp_path / "m"]) == 0
    want = load_state(read_expert(ens / "x.cluster1"))
    got = _state(tmp_path / "m" / "consolidated.pt")
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    # a bf16 expert stays bf16 and bit-exact (the average accumulates in fp32 and casts back)
    e = ens / "x.cluster0"
    info = json.loads((e / "expert.json").read_text())
    save_consolidated(e / "consolidated.pt", want, ModelArgs.from_dict(info["model_args"]), dtype=torch.bfloat16)
    assert _merge(["--experts-dir", ens, "--experts", "0", "--output-dir", tmp_path / "m16"]) == 0
    ref = _state(e / "consolidated.pt")
    got = _state(tmp_path / "m16" / "consolidated.pt")
    floats = [k for k in ref if ref[k].is_floating_point()]
    assert floats and all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k]) for k in floats)


def test_uniform_and_explicit_merges_write_an_expert_that_eval_reads(tiny, tmp_path, capsys):
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval
    from xlbtm.ensemble.experts import load_state, read_expert
    from xlbtm.formats.hf import load_hf

    ens, _ = _experts(tiny, tmp_path, [1, 2, 3])
    states = [load_state(read_expert(ens / f"x.cluster{k}")) for k in range(3)]
    out = tmp_path / "m"
    assert _merge(["--experts-dir", ens, "--weights", "0.5,0.3,0.2", "--output-dir", out]) == 0
    assert "explicit weights 0:0.5000, 1:0.3000, 2:0.2000" in capsys.readouterr().out
    got = _state(out / "consolidated.pt")
    for k, v in states[0].items():
        ref = 0.5 * v.double() + 0.3 * states[1][k].double() + 0.2 * states[2][k].double()
        torch.testing.assert_close(got[k].double(), ref, rtol=1e-6, atol=1e-6)
    info = json.loads((out / "expert.json").read_text())
    assert info["cluster"] == 0 and info["num_clusters"] == 1 and info["clusterer_fingerprint"] is None
    assert info["seed_model"] == "debug" and info["tokenizer_fingerprint"] == tiny["tok"].fingerprint
    assert info["data"]["weights"] == [0.5, 0.3, 0.2] and info["data"]["weights_method"] == "explicit"
    assert [p.rsplit("/", 1)[1] for p in info["data"]["merged_from"]] == [f"x.cluster{k}" for k in range(3)]
    hf_state = load_hf(out / "hf")[0]
    assert all(torch.equal(hf_state[k], got[k]) for k in got)

    # uniform: eval's --ensemble-type average is the same code, so the merged model scores identically
    assert _merge(["--experts-dir", ens, "--output-dir", out]) == 0  # an earlier merge is replaced
    assert json.loads((out / "expert.json").read_text())["data"]["weights_method"] == "uniform"
    kw = dict(data_dir=str(tiny["data"]), data_subset="valid", max_valid_steps=4)
    avg = run_eval(EvalConfig(job_dir=str(tmp_path / "ja"), ensemble_type="average", experts_dir=str(ens), **kw))
    dense = run_eval(EvalConfig(job_dir=str(tmp_path / "jd"), ensemble_type="dense", model_paths=[str(out)], **kw))
    assert dense["result_ppl"] == avg["result_ppl"]
    single = run_eval(
        EvalConfig(job_dir=str(tmp_path / "j0"), ensemble_type="dense", model_paths=[str(ens / "x.cluster0")], **kw)
    )
    assert single["result_ppl"] != pytest.approx(dense["result_ppl"], rel=1e-4)  # the experts really differ


def _brute_force_posterior(models, args, docs):
    """Each expert's plain forward over each whole document, summed log-probs, softmax across experts, mean;
    and the tolerance for comparing it: a weight moves by at most ~2x the rounding of the summed log-probs it is
    the softmax of (float32 forwards, other batch shapes than posterior_weights')."""
    post, scale = [], 0.0
    for d in range(docs.num_docs):
        x = torch.from_numpy(docs.doc(d))
        inp = torch.cat([torch.tensor([args.eos_id]), x[:-1]])[None]
        with torch.no_grad():
            ll = torch.stack([torch.log_softmax(m(inp).double(), -1)[0, torch.arange(len(x)), x].sum() for m in models])
        post.append(torch.softmax(ll, 0))
        scale = max(scale, float(ll.abs().max()))
    return torch.stack(post).mean(0).numpy(), 2 * fp_tol(scale)


def _sharpen(model, factor: float):
    """Scale the output embedding: a random-init expert that is more (or less) confident, so the experts'
    likelihoods, and hence the posterior, are far from uniform."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k in sd:
        if k == "embed_tokens.weight":  # tied with the output projection: sharper logits
            sd[k] *= factor
    return sd


def test_posterior_weights_equal_a_brute_force_computation(tiny, tmp_path):
    from xlbtm.ensemble.experts import find_experts
    from xlbtm.ensemble.merge import posterior_weights
    from xlbtm.ensemble.scoring import load_docs
    from xlbtm.models import ModelArgs

    base = [
        make_expert(tmp_path / "tmp" / f"b{k}", tiny["tok"], k, 3, seed=10 + k, max_positions=1024)[0] for k in range(3)
    ]
    models = []
    for k, f in enumerate((1.0, 1.004, 1.008)):
        models.append(
            make_expert(
                tmp_path / "ens" / f"x.cluster{k}",
                tiny["tok"],
                k,
                3,
                seed=10 + k,
                max_positions=1024,
                state=_sharpen(base[k], f),
            )[0]
        )
    experts = find_experts(tmp_path / "ens")
    args = ModelArgs.from_dict(experts[0].info["model_args"])
    job = tmp_path / "job"
    w = posterior_weights(experts, tiny["data"], "valid", max_docs=6, job_dir=job, batch_tokens=256)
    docs = load_docs(job)
    assert docs.num_docs == 6 and np.diff(docs.offsets).max() < 1024  # one window each: a plain forward
    ref, tol = _brute_force_posterior(models, args, docs)
    np.testing.assert_allclose(w, ref, atol=tol)
    assert sum(w) == pytest.approx(1.0, abs=1e-9)
    assert max(w) - min(w) > 0.05, w  # not uniform: the test can tell a wrong posterior from the prior

    # langs: only those documents (the new languages' documents of a corpus), max_docs counts them
    w_de = posterior_weights(
        experts, tiny["data"], "valid", langs={"de", "ru"}, max_docs=4, job_dir=tmp_path / "job_de"
    )
    docs_de = load_docs(tmp_path / "job_de")
    assert set(docs_de.langs) <= {"de", "ru"} and docs_de.num_docs == 4
    ref_de, tol_de = _brute_force_posterior(models, args, docs_de)
    np.testing.assert_allclose(w_de, ref_de, atol=tol_de)
    assert posterior_weights(experts, tiny["data"], "valid", max_docs=6) == pytest.approx(w, abs=1e-6)  # temp dir
    with pytest.raises(InputError, match="no scorable documents in languages"):
        posterior_weights(experts, tiny["data"], "valid", langs={"xx"})


def test_posterior_weights_through_the_script(tiny, tmp_path, capsys):
    ens, _ = _experts(tiny, tmp_path, [4, 5])
    out = tmp_path / "m"
    argv = [
        "--experts-dir",
        ens,
        "--weights",
        "posterior",
        "--data-dir",
        tiny["data"],
        "--max-docs",
        "3",
        "--output-dir",
        out,
    ]
    assert _merge(argv) == 0
    info = json.loads((out / "expert.json").read_text())
    assert info["data"]["weights_method"] == "posterior" and sum(info["data"]["weights"]) == pytest.approx(1.0)
    assert "posterior weights" in capsys.readouterr().out
    assert _merge(argv[:4] + ["--output-dir", tmp_path / "m2"]) == 2  # no --data-dir
    assert "--data-dir" in capsys.readouterr().err and not (tmp_path / "m2").exists()


def test_bad_input_is_one_clear_error_and_nothing_is_written(tiny, tmp_path, capsys):
    ens, _ = _experts(tiny, tmp_path, [1, 2, 3])
    out = tmp_path / "m"

    def fails(argv, *needles):
        assert _merge(["--experts-dir", ens, *argv, "--output-dir", out]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        for n in needles:
            assert n in err, err
        assert not out.exists()

    fails(["--weights", "0.5,0.3,0.3"], "--weights", "sum to 1")
    fails(["--weights", "1.2,-0.1,-0.1"], "--weights", "non-negative")
    fails(["--weights", "-0.5,1.5,0"], "--weights", "non-negative")  # a value, not a flag, for argparse too
    fails(["--weights", "0.5,0.5"], "--weights", "2 weight(s) for 3 expert(s)")
    fails(["--weights", "half"], "--weights")
    fails(["--experts", "0,7"], "--experts", "[7]")
    for key, value in (
        ("seed_identity", "preset debug, init seed 7"),
        ("tokenizer_fingerprint", "other-tok"),
        ("objective", "mlm"),
    ):
        p = ens / "x.cluster2" / "expert.json"
        good = p.read_text()
        p.write_text(json.dumps({**json.loads(good), key: value}))
        fails([], str(p), "cannot merge")
        p.write_text(good)
    # an output inside an input, or an existing dir that is not a merge, is refused before anything is written
    for inside in (ens / "x.cluster0" / "merged", ens / "merged"):
        assert _merge(["--experts-dir", ens, "--output-dir", inside]) == 2
        assert "--output-dir" in capsys.readouterr().err and not inside.exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    assert _merge(["--experts-dir", ens, "--output-dir", tmp_path / "busy"]) == 2
    assert "not an output of merge_experts" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    # an earlier merge of *other* experts is another run's output: kept, not replaced
    assert _merge(["--experts-dir", ens, "--experts", "0,1", "--output-dir", tmp_path / "m01"]) == 0
    before = (tmp_path / "m01" / "expert.json").read_text()
    assert _merge(["--experts-dir", ens, "--experts", "1,2", "--output-dir", tmp_path / "m01"]) == 2
    assert "for other inputs" in capsys.readouterr().err
    assert (tmp_path / "m01" / "expert.json").read_text() == before


def test_merge_library_refusals(tiny, tmp_path, monkeypatch):
    from xlbtm.ensemble.experts import find_experts
    from xlbtm.ensemble.merge import average_states, merge_experts, posterior_weights

    for k in range(2):
        make_expert(tmp_path / "mlm" / f"x.cluster{k}", tiny["tok"], k, 2, seed=k, objective="mlm")
    mlm = find_experts(tmp_path / "mlm")
    with pytest.raises(UsageError, match="causal"):
        posterior_weights(mlm, tiny["data"], "valid")
    with pytest.raises(UsageError, match="sum to 1"):
        merge_experts(mlm, [0.7, 0.7], tmp_path / "out", method="explicit")
    assert not (tmp_path / "out").exists()
    # a non-floating buffer that differs cannot be averaged
    from xlbtm.ensemble import merge as merge_mod

    states = [{"w": torch.ones(2), "n": torch.tensor([1])}, {"w": torch.zeros(2), "n": torch.tensor([2])}]
    monkeypatch.setattr(merge_mod, "load_state", lambda e: states[mlm.index(e)])
    with pytest.raises(InputError, match="non-floating tensor n"):
        average_states(mlm)
    states[1]["n"] = torch.tensor([1])
    avg = average_states(mlm)
    assert torch.equal(avg["w"], torch.full((2,), 0.5)) and torch.equal(avg["n"], torch.tensor([1]))


def test_merge_experts_is_an_xlbtm_command(capsys):
    from xlbtm.scripts.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["merge-experts", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(f in out for f in ("--experts-dir", "--weights", "--data-dir", "--output-dir", "posterior"))
