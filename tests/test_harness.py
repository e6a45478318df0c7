"""The `xlbtm` model of lm-evaluation-harness, offline, through the real `lm_eval.simple_evaluate` on the local
tasks in tests/harness_tasks (multiple choice, generation, rolling perplexity): its loglikelihoods equal the
scores eval_ensemble computes for the same text with the same weights, rolling loglikelihood scores every
token of documents longer than the experts' positions, generation is the mixture's, `--model xlbtm` resolves
from lm-eval's registry and command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from mixture_helpers import build_ensemble  # noqa: E402
from tolerance import fp_tol, ppl_rel_tol  # noqa: E402

TASKS = Path(__file__).parent / "harness_tasks"
T = 0.5


@pytest.fixture(scope="module")
def ens(tmp_path_factory):
    return build_ensemble(tmp_path_factory.mktemp("harness"), K=2)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def _model_args(ens, **kw) -> str:
    args = {
        "experts_dir": ens["experts"],
        "clusterer": ens["clusterer"],
        "ensemble_type": "clustering",
        "temperature": T,
        "topk": -1,
        **kw,
    }
    return ",".join(f"{k}={v}" for k, v in args.items())


def _evaluate(model, tasks, model_args=None):
    from lm_eval.tasks import TaskManager

    import xlbtm.ensemble.harness  # noqa: F401  (registers --model xlbtm)

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        log_samples=True,
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
        batch_size=4,
        device="cpu",
    )


def _eval_ensemble_docs(ens, tmp_path, texts, **kw):
    """eval_ensemble over `texts` (one document each): (docs, per-expert log-probs [K, N], routing arrays)."""
    from xlbtm.ensemble.evaluate import EvalConfig, run_eval
    from xlbtm.ensemble.scoring import load_docs, read_scores

    data = tmp_path / "corpus"
    (data / "valid").mkdir(parents=True)
    (data / "valid" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    job = tmp_path / "job"
    res = run_eval(
        EvalConfig(
            data_dir=str(data),
            data_subset="valid",
            job_dir=str(job),
            ensemble_type="clustering",
            path_to_clusterer=str(ens["clusterer"]),
            experts_dir=str(ens["experts"]),
            temperatures=[T],
            **kw,
        )
    )
    docs = load_docs(job)
    assert docs.num_docs == len(texts)
    logp = torch.from_numpy(np.stack([read_scores(job, f"expert{k}") for k in range(ens["K"])]).astype(np.float64))
    return res, docs, logp, dict(np.load(job / "routing.npz"))


@pytest.mark.parametrize("route,topk", [("context", -1), ("prefix", -1), ("context", 1)])
def test_multiple_choice_loglikelihoods_equal_eval_ensemble(ens, tmp_path, route, topk):
    from xlbtm.ensemble import mixing, routing

    out = _evaluate("xlbtm", ["xlbtm_test_mc"], _model_args(ens, route=route, topk=topk))
    samples = out["samples"]["xlbtm_test_mc"]
    pairs = [(a[0], a[1]) for s in samples for a in s["arguments"]]
    got = [r[0][0] for s in samples for r in s["resps"]]
    assert len(pairs) == 18 and all(c.startswith(" ") for _, c in pairs)
    _, docs, logp, route_arr = _eval_ensemble_docs(ens, tmp_path, [c + x for c, x in pairs], topks=[topk])
    tok = ens["tok"]
    sq, empty = torch.from_numpy(route_arr["token_sqdist"]), torch.from_numpy(route_arr["token_empty"])
    log_w_prefix = routing.log_weights(sq, T, topk=topk, empty=empty)  # eval_ensemble's per-token weights
    by_logits = []
    for d, ((ctx, cont), ll) in enumerate(zip(pairs, got)):
        n = len(tok.encode(ctx + cont)) - len(tok.encode(ctx))
        end = int(docs.offsets[d + 1])
        sl = slice(end - n, end)
        if route == "prefix":
            log_w = log_w_prefix[:, sl]
        else:  # the weights of the first continuation token (its prefix is the context) for every token
            log_w = log_w_prefix[:, end - n : end - n + 1].expand(-1, n)
        ref = float(mixing.mix(logp[:, sl], log_w).sum())
        assert ll == pytest.approx(ref, abs=fp_tol(ref))
        by_logits.append(float((log_w.exp() * logp[:, sl]).sum()))  # a weighted mean of log-probs: not a mixture
    if topk == -1:  # mixing log-probs (or logits) instead of probabilities would be caught
        assert max(abs(a - b) for a, b in zip(got, by_logits)) > 0.1
    else:  # top-1: exactly the chosen expert's log-probs
        assert got == pytest.approx(by_logits, abs=fp_tol(*by_logits))
    # acc is lm-eval's, computed from these loglikelihoods
    acc = np.mean([int(np.argmax([r[0][0] for r in s["resps"]]) == s["target"]) for s in samples])
    assert out["results"]["xlbtm_test_mc"]["acc,none"] == pytest.approx(acc)


def test_rolling_loglikelihood_scores_every_token_of_long_documents(ens, tmp_path):
    from xlbtm.ensemble.harness import XlbtmLM

    lm = XlbtmLM(
        experts_dir=str(ens["experts"]), clusterer=str(ens["clusterer"]), temperature=T, stride=24, device="cpu"
    )
    out = _evaluate(lm, ["xlbtm_test_ppl"])
    samples = out["samples"]["xlbtm_test_ppl"]
    texts = [s["arguments"][0][0] for s in samples]
    lengths = [len(ens["tok"].encode(t)) for t in texts]
    assert min(lengths) > 2 * lm.lm.window  # longer than the experts' 64 positions
    assert lm.lm.stats["scored_tokens"] == sum(lengths)  # every token, once
    got = sum(s["resps"][0][0] for s in samples)
    res, _, _, _ = _eval_ensemble_docs(ens, tmp_path, texts, context_window=lm.lm.window, stride=24)
    assert res["tokens"] == sum(lengths)
    assert np.exp(-got / sum(lengths)) == pytest.approx(res["result_ppl"], rel=ppl_rel_tol(res["result_ppl"]))
    assert out["results"]["xlbtm_test_ppl"]["word_perplexity,none"] > 1


def test_generation_task_is_the_mixtures_greedy_generation(ens):
    from xlbtm.ensemble.mixture import MixtureLM

    out = _evaluate("xlbtm", ["xlbtm_test_gen"], _model_args(ens, topk=1))
    lm = MixtureLM.load(
        experts_dir=str(ens["experts"]), clusterer=str(ens["clusterer"]), temperature=T, topk=1, device="cpu"
    )
    for s in out["samples"]["xlbtm_test_gen"]:
        ctx, kw = s["arguments"][0]
        ref = lm.generate([lm.tokenizer.encode(ctx)], max_new_tokens=kw["max_gen_toks"], stop=kw["until"])[0]
        assert s["resps"][0][0] == ref.text
    assert "exact_match,none" in out["results"]["xlbtm_test_gen"]


def test_one_model_by_model_path(ens):
    path = ens["experts"] / "run.cluster0" / "consolidated.pt"
    out = _evaluate("xlbtm", ["xlbtm_test_mc"], f"model_path={path}")
    from xlbtm.ensemble.mixture import MixtureLM

    lm = MixtureLM.load(model_paths=[str(path)], device="cpu")
    s = out["samples"]["xlbtm_test_mc"][0]
    ctx, cont = s["arguments"][0]
    ref = lm.loglikelihood(
        [(lm.tokenizer.encode(ctx), lm.tokenizer.encode(ctx + cont)[len(lm.tokenizer.encode(ctx)) :])]
    )
    assert s["resps"][0][0][0] == pytest.approx(ref[0][0], abs=fp_tol(ref[0][0]))  # lm-eval batches other requests


def test_model_name_resolves_and_the_command_line_runs(ens, tmp_path, capsys):
    from lm_eval.api.registry import get_model, model_registry

    from xlbtm.cli import main_wrapper
    from xlbtm.ensemble.harness import XlbtmLM
    from xlbtm.scripts.__main__ import main as xlbtm_main

    assert get_model("xlbtm") is XlbtmLM
    assert "hf" in model_registry  # lm-eval's own models are still registered
    rc = xlbtm_main(
        [
            "lm-eval",
            "--model",
            "xlbtm",
            "--model_args",
            _model_args(ens, topk=1),
            "--tasks",
            "xlbtm_test_mc",
            "--include_path",
            str(TASKS),
            "--limit",
            "2",
            "--output_path",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    results = list((tmp_path / "out").rglob("results*.json"))
    assert results and "xlbtm_test_mc" in json.loads(results[0].read_text())["results"]
    from xlbtm.scripts.lm_eval import main

    assert (
        main_wrapper(
            "lm_eval",
            main,
            [
                "--model",
                "xlbtm",
                "--model_args",
                "experts_dir=/nonexistent",
                "--tasks",
                "xlbtm_test_mc",
                "--include_path",
                str(TASKS),
            ],
        )
        == 2
    )
    assert "/nonexistent" in capsys.readouterr().err


def test_bad_model_args_and_masked_lm_experts(ens, tmp_path):
    from test_ensemble import make_expert

    from xlbtm.ensemble.harness import XlbtmLM
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError, match="tempreature"):
        XlbtmLM.create_from_arg_string(f"experts_dir={ens['experts']},tempreature=0.1")
    with pytest.raises(UsageError, match="route"):
        XlbtmLM(experts_dir=str(ens["experts"]), clusterer=str(ens["clusterer"]), route="doc")
    make_expert(tmp_path / "mlm" / "x.cluster0", ens["tok"], 0, 1, seed=1, objective="mlm", consolidated=True)
    with pytest.raises(UsageError, match="masked LM.*lm-eval"):
        XlbtmLM(experts_dir=str(tmp_path / "mlm"))


def test_only_the_adapter_imports_lm_eval():
    import ast

    from train_helpers import REPO

    importers = set()
    for path in (REPO / "xlbtm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n.split(".")[0] == "lm_eval" for n in names):
                importers.add(str(path.relative_to(REPO)))
    assert importers == {os.path.join("xlbtm", "ensemble", "harness.py")}


@pytest.mark.parametrize(
    "arg,match",
    [
        ("temperature=abc", "temperature=abc: expected a number"),
        ("topk=two", "topk=two: expected an integer"),
        ("topk=1.5", "topk=1.5: expected an integer"),
        ("stride=x", "stride=x: expected an integer"),
        ("seed=s", "seed=s: expected an integer"),
        ("max_gen_toks=many", "max_gen_toks=many: expected an integer"),
        ("context_window=big", "context_window=big: expected an integer"),
        ("cbtm_compat=maybe", "cbtm_compat=maybe: expected true or false"),
    ],
)
def test_model_args_are_parsed_with_their_types(ens, arg, match):
    """Each --model_args value parses as its type or is refused with one line naming the key: nothing is
    silently read as something else."""
    from xlbtm.ensemble.harness import XlbtmLM
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError, match=match):
        XlbtmLM.create_from_arg_string(f"experts_dir={ens['experts']},clusterer={ens['clusterer']},{arg}")


def test_model_args_booleans_mean_what_they_say(ens):
    from xlbtm.ensemble.harness import XlbtmLM

    base = f"experts_dir={ens['experts']},clusterer={ens['clusterer']},device=cpu"
    assert XlbtmLM.create_from_arg_string(f"{base},cbtm_compat=no").lm.cbtm_compat is False
    assert XlbtmLM.create_from_arg_string(f"{base},cbtm_compat=True").lm.cbtm_compat is True
    assert XlbtmLM.create_from_arg_string(f"{base},topk=1").lm.topk == 1


def test_no_device_flag_means_xlbtms_device_policy_not_lm_evals_default(monkeypatch):
    """Some lm-eval releases default --device to cuda:0, a traceback on a CPU-only machine: without the flag
    xlbtm's policy ($XLBTM_DEVICE, else cuda when visible, else cpu) picks the device."""
    import lm_eval.__main__

    from xlbtm.ensemble.harness import cli_main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setenv("XLBTM_DEVICE", "cpu")
    cli_main(["--model", "xlbtm", "--tasks", "t"])
    assert seen[-1][-2:] == ["--device", "cpu"]
    for given in (["--device", "cuda:1"], ["--device=cuda:1"]):  # the user's own choice is left alone
        cli_main(["--model", "xlbtm", *given])
        assert seen[-1] == ["lm_eval", "--model", "xlbtm", *given]
