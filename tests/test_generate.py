"""Generation from the ensemble: the KV cache equals a full forward, cached decoding equals uncached decoding of
the mixture (probabilities mixed, routing updated per token), one expert equals transformers' `generate`,
top-k runs only the chosen experts, stop sequences, and the `generate` script's flags and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mixture_helpers import build_ensemble, sharpen
from tolerance import fp_tol, tensor_tol


@pytest.fixture(scope="module")
def ens(tmp_path_factory):
    return build_ensemble(tmp_path_factory.mktemp("gen"), K=2)


def _lm(ens, **kw):
    from xlbtm.ensemble.mixture import MixtureLM

    kw.setdefault("temperature", 0.5)
    return MixtureLM.load(experts_dir=str(ens["experts"]), clusterer=str(ens["clusterer"]), device="cpu", **kw)


# the last one (a demo-corpus sentence) starts in cluster 0 and its greedy continuation moves to cluster 1
PROMPTS = ["Das ist ein kleiner Test", "the quick brown fox", "Le chat est sur la table et", "Жэ кёль син син кёль го"]


# ----------------------------------------------------------------------------------------------- KV cache


def _model(seed=0, max_positions=48):
    from xlbtm.models import build_model, get_preset

    args = get_preset("debug", vocab_size=97, max_positions=max_positions)
    torch.manual_seed(seed)
    return sharpen(build_model(args), seed).eval()


def test_kv_cache_in_chunks_equals_one_full_forward():
    m = _model()
    x = torch.randint(3, 97, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache()
        parts = [m.output(m.forward_hidden(x[:, a:b], cache=cache)) for a, b in ((0, 9), (9, 10), (10, 17), (17, 30))]
    assert cache.seq_len == 30
    torch.testing.assert_close(torch.cat(parts, 1), full, **tensor_tol(full))


def test_kv_cache_left_padded_rows_equal_their_unpadded_forward():
    m = _model(1)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 97, (n,), generator=g) for n in (12, 5, 9)]
    P = 12
    x = torch.full((3, P), m.args.pad_id)
    pad = torch.ones((3, P), dtype=torch.bool)
    for b, r in enumerate(rows):
        x[b, P - len(r) :], pad[b, P - len(r) :] = r, False
    nxt = torch.randint(3, 97, (3, 6), generator=g)
    with torch.no_grad():
        cache = m.new_cache()
        first = m.output(m.forward_hidden(x, pad, cache=cache))
        steps = [m.output(m.forward_hidden(nxt[:, i : i + 1], cache=cache)) for i in range(6)]
        for b, r in enumerate(rows):
            ref = m(torch.cat([r, nxt[b]])[None])[0]
            torch.testing.assert_close(first[b, P - len(r) :], ref[: len(r)], **tensor_tol(ref))
            torch.testing.assert_close(torch.cat([s[b] for s in steps]), ref[len(r) :], **tensor_tol(ref))
        with pytest.raises(ValueError, match="max_positions"):
            m.forward_hidden(torch.randint(3, 97, (3, 40)), cache=cache)


def test_kv_cache_feeding_some_rows_equals_their_full_forward():
    """Rows fed at different steps (an expert skips the rows routed elsewhere, then catches them up)."""
    m = _model(2)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(3, 97, (3, 20), generator=g)
    full = m(x)
    with torch.no_grad():
        cache = m.new_cache(batch_size=3)
        first = m.output(m.forward_hidden(x[:, :8], cache=cache))
        got = {b: [first[b]] for b in range(3)}
        fed = [8, 8, 8]
        for rows, upto in (([0, 2], 9), ([0], 10), ([1, 2], 12), ([0, 1, 2], 13), ([1], 20), ([0, 2], 20)):
            n = [upto - fed[b] for b in rows]
            T = max(n)
            tok = torch.full((len(rows), T), m.args.pad_id)
            pad = torch.ones((len(rows), T), dtype=torch.bool)
            for i, b in enumerate(rows):
                tok[i, T - n[i] :], pad[i, T - n[i] :] = x[b, fed[b] : upto], False
            out = m.output(m.forward_hidden(tok, pad, cache=cache, rows=torch.tensor(rows)))
            for i, b in enumerate(rows):
                got[b].append(out[i, T - n[i] :])
                fed[b] = upto
    for b in range(3):
        torch.testing.assert_close(torch.cat(got[b]), full[b], **tensor_tol(full))


# ------------------------------------------------------------------------------------- mixture decoding


def _reference(lm, prompt, n, sample=False, seed=0):
    """Uncached decoding of the mixture: full forwards of `</s> prompt generated`, weights from
    Router.distances of the whole prefix (eval_ensemble's routing), probabilities mixed."""
    eos = lm.args.eos_id
    gen, rng = [], torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = prompt + gen
        sq, em = lm.distances(ids + [0])  # row j is the prefix [0, j): the last row is the whole prefix
        log_w = lm.log_weights(sq[-1:], em[-1:])[:, 0]
        with torch.no_grad():
            lps = torch.stack(
                [torch.log_softmax(m(torch.tensor([[eos] + ids]))[0, -1].double(), -1) for m in lm.models]
            )
        mixed = torch.logsumexp(lps + log_w[:, None], 0)
        t = (
            int(torch.multinomial(torch.softmax(mixed[None], -1), 1, generator=rng)[0, 0])
            if sample
            else int(mixed.argmax())
        )
        if t == eos:
            break
        gen.append(t)
    return gen


@pytest.mark.parametrize("topk", [-1, 1])
def test_cached_greedy_equals_uncached_mixture_argmax(ens, topk):
    lm = _lm(ens, topk=topk)
    tok = ens["tok"]
    prompts = [tok.encode(p) for p in PROMPTS]
    gens = lm.generate(prompts, max_new_tokens=24)  # one left-padded batch
    for p, g in zip(prompts, gens):
        ref = _reference(lm, p, 24)
        assert g.ids == ref and len(ref) >= 20
        assert g.weights.shape == (len(g.ids) + (g.finish == "eos"), 2)
        np.testing.assert_allclose(g.weights.sum(1), 1.0, atol=1e-9)
    if topk == 1:
        assert all(np.isin(g.weights, [0.0, 1.0]).all() for g in gens)
        # the routed expert changes mid-generation: the new one first reads the tokens it missed (catch-up)
        assert any(len(set(g.weights.argmax(1))) > 1 for g in gens)
        lm.stats["gen_expert_steps"].clear()
        lm.generate(prompts[:1], max_new_tokens=24)
        assert set(lm.stats["gen_expert_steps"]) == {1}  # only the top expert ran
        lm.stats["gen_expert_rows"].clear()
        gens = lm.generate(prompts, max_new_tokens=24)
        alive = [sum(len(g.weights) > t for g in gens) for t in range(len(lm.stats["gen_expert_rows"]))]
        assert lm.stats["gen_expert_rows"] == alive  # in a batch too: one expert per row and token
    else:
        assert any(0.01 < g.weights[0, 0] < 0.99 for g in gens)  # both experts really mix


def test_sampling_is_seeded_and_draws_from_the_mixture(ens):
    lm = _lm(ens)
    p = ens["tok"].encode(PROMPTS[0])
    a = lm.generate([p], max_new_tokens=20, sample=True, seed=3)[0]
    assert a.ids == lm.generate([p], max_new_tokens=20, sample=True, seed=3)[0].ids
    assert a.ids == _reference(lm, p, 20, sample=True, seed=3)
    assert a.ids != lm.generate([p], max_new_tokens=20, sample=True, seed=4)[0].ids
    assert len(set(a.ids)) > 5  # sampling visits many tokens (greedy of a random model repeats)


def test_mixing_probabilities_not_logits(ens):
    """The first generated token's distribution is sum_k w_k p_k, which differs from softmax(sum_k w_k logits)."""
    lm = _lm(ens, temperature=5.0)
    p = ens["tok"].encode(PROMPTS[1])
    eos = lm.args.eos_id
    sq, em = lm.distances(p + [0])
    w = lm.log_weights(sq[-1:], em[-1:])[:, 0].exp()
    with torch.no_grad():
        logits = torch.stack([m(torch.tensor([[eos] + p]))[0, -1].double() for m in lm.models])
    probs = (w[:, None] * torch.softmax(logits, -1)).sum(0)
    by_logits = torch.softmax((w[:, None] * logits).sum(0), -1)
    assert int(probs.argmax()) != int(by_logits.argmax()) or float((probs - by_logits).abs().max()) > 0.05
    g = lm.generate([p], max_new_tokens=1)[0]
    assert (g.ids or [eos])[0] == int(probs.argmax())


def test_one_expert_greedy_equals_transformers_generate(ens, tmp_path):
    from transformers import XGLMForCausalLM

    from xlbtm.ensemble.experts import load_model, read_expert
    from xlbtm.ensemble.mixture import MixtureLM
    from xlbtm.formats.hf import save_hf

    path = ens["experts"] / "run.cluster1" / "consolidated.pt"
    lm = MixtureLM.load(model_paths=[str(path)], device="cpu")
    assert lm.ensemble_type == "dense" and lm.num_models == 1
    model, args = load_model(read_expert(path))
    save_hf(model, args, tmp_path / "hf")
    hf = XGLMForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    for text in PROMPTS:
        p = ens["tok"].encode(text)
        ours = lm.generate([p], max_new_tokens=25)[0]
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([[args.eos_id] + p]),
                attention_mask=torch.ones(1, len(p) + 1, dtype=torch.long),
                max_new_tokens=25,
                do_sample=False,
                num_beams=1,
                pad_token_id=args.pad_id,
                eos_token_id=args.eos_id,
            )[0, len(p) + 1 :].tolist()
        assert ours.ids + ([args.eos_id] if ours.finish == "eos" else []) == out
        assert len(out) >= 20


def test_stop_sequences_and_max_tokens(ens):
    lm = _lm(ens)
    tok = ens["tok"]
    p = tok.encode(PROMPTS[2])
    full = lm.generate([p], max_new_tokens=16)[0]
    assert full.finish == "length" and len(full.ids) == 16
    assert lm.generate([p], max_new_tokens=5)[0].ids == full.ids[:5]
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    g = lm.generate([p], max_new_tokens=16, stop=["nothing-like-this", stop])[0]
    assert g.finish == "stop" and g.text == text[: text.index(stop)] and len(g.ids) < 16
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError, match="max-new-tokens"):
        lm.generate([p], max_new_tokens=64)  # no room left in the 64 positions


def test_scoring_agrees_with_generation(ens, monkeypatch):
    """The greedy continuation is greedy under route=prefix scoring (generation routes by the growing prefix);
    one changed token is not; an empty continuation scores 0; the log-likelihood of a continuation is the sum of
    its tokens' mixture log-probs."""
    lm = _lm(ens)
    p = ens["tok"].encode(PROMPTS[0])
    g = lm.generate([p], max_new_tokens=8)[0].ids
    other = g[:3] + [g[3] + 1] + g[4:]
    (ll, greedy), (ll2, greedy2), (ll0, greedy0) = lm.loglikelihood([(p, g), (p, other), (p, [])], route="prefix")
    assert greedy and not greedy2 and (ll0, greedy0) == (0.0, True)
    parts = [lm.loglikelihood([(p + g[:j], g[j : j + 1])], route="prefix")[0][0] for j in range(len(g))]
    assert ll == pytest.approx(sum(parts), abs=fp_tol(ll))  # one forward vs one per token
    import xlbtm.ensemble.mixture as mixture

    monkeypatch.setattr(mixture, "LOGIT_ELEMENTS", 3 * lm.args.vocab_size)  # the mixture formed 3 positions at a time
    assert lm.loglikelihood([(p, g), (p, other)], route="prefix") == [
        (pytest.approx(ll, abs=fp_tol(ll)), True),
        (pytest.approx(ll2, abs=fp_tol(ll2)), False),
    ]
    ctx = lm.loglikelihood([(p, g)], route="context")[0][0]
    assert ctx != pytest.approx(ll, abs=1e-3)  # the two routings differ once the continuation moves the posterior


def test_top1_scoring_runs_each_request_through_its_own_expert_only(ens):
    lm = _lm(ens, topk=1)
    tok = ens["tok"]
    reqs = [(tok.encode(p), tok.encode(" und so weiter")) for p in PROMPTS]
    batched = lm.loglikelihood(reqs)
    assert lm.stats["expert_forwards"] == [2]  # the batch mixes clusters: both experts ran ...
    assert lm.stats["expert_rows"] == len(reqs)  # ... each on its own requests only
    lm.batch_size = 1
    assert [x for x, _ in lm.loglikelihood(reqs)] == pytest.approx(
        [x for x, _ in batched], abs=fp_tol(*[x for x, _ in batched])
    )
    single = [_lm(ens, topk=-1, temperature=1e-4).loglikelihood([r])[0][0] for r in reqs]  # ~hard routing
    assert [x for x, _ in batched] == pytest.approx(single, abs=1e-4)


def test_bfloat16_experts_score_and_generate_close_to_float32(ens):
    tok = ens["tok"]
    reqs = [(tok.encode(p), tok.encode(" und so weiter")) for p in PROMPTS]
    full, half = _lm(ens), _lm(ens, dtype="bfloat16")
    assert next(half.models[0].parameters()).dtype == torch.bfloat16
    a, b = [x for x, _ in full.loglikelihood(reqs)], [x for x, _ in half.loglikelihood(reqs)]
    assert b == pytest.approx(a, rel=0.05)
    assert len(half.generate([reqs[0][0]], max_new_tokens=8)[0].ids) == 8
    from xlbtm.errors import UsageError

    with pytest.raises(UsageError, match="dtype"):
        _lm(ens, dtype="int8")


@pytest.mark.parametrize("featurizer", ["subword", "word"])
def test_routing_prefix_state_equals_router_distances(ens, tmp_path, featurizer):
    """Generation's incremental routing state gives eval_ensemble's per-prefix distances (subword: a running
    sum; word: the prefix re-featurized from its decoded text)."""
    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.ensemble.routing import router_from_clusterer

    clus = (
        ens["clus"]
        if featurizer == "subword"
        else train_tfidf_clusterer(ens["data"], 2, tmp_path / "word", featurizer="word", max_docs=120)[0]
    )
    router = router_from_clusterer(clus, ens["tok"])
    assert router.incremental == (featurizer == "subword")
    ids = ens["tok"].encode("Das ist ein kleiner Test über Wörter und Sätze, the quick brown fox")
    rows, empty = router.distances(ids)
    st = router.prefix_state()
    for j in range(len(ids)):
        d, e = st.distances()
        np.testing.assert_allclose(d, rows[j], atol=1e-5)
        assert e == empty[j]
        st.push([ids[j]])


# ------------------------------------------------------------------------------------------------- script


def _run(argv, capsys):
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.generate import main

    rc = main_wrapper("generate", main, argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_script_prompt_and_input(ens, tmp_path, capsys):
    base = [
        "--experts-dir",
        str(ens["experts"]),
        "--path-to-clusterer",
        str(ens["clusterer"]),
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.5",
    ]
    rc, out, err = _run(base + ["--prompt", PROMPTS[0]], capsys)
    assert rc == 0, err
    lm = _lm(ens)
    g = lm.generate([ens["tok"].encode(PROMPTS[0])], max_new_tokens=12)[0]
    assert out.splitlines()[0] == PROMPTS[0] + g.text
    assert "expert0" in out and "expert1" in out and "12 tokens, length" in out
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    rc, out, err = _run(
        base + ["--input", str(inp), "--output", str(tmp_path / "out.jsonl"), "--topk", "1", "--sample", "--seed", "1"],
        capsys,
    )
    assert rc == 0, err
    res = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in res] == PROMPTS
    assert all(sum(r["expert_weights"].values()) == pytest.approx(1.0) for r in res)
    assert all(r["finish"] in ("eos", "length") and r["tokens"] <= 12 for r in res)
    # a single model: --model-paths one consolidated.pt, no clusterer
    rc, out, err = _run(
        [
            "--model-paths",
            str(ens["experts"] / "run.cluster0" / "consolidated.pt"),
            "--prompt",
            "x",
            "--max-new-tokens",
            "3",
        ],
        capsys,
    )
    assert rc == 0, err


def test_generate_script_errors(ens, tmp_path, capsys):
    from test_ensemble import make_expert

    base = ["--experts-dir", str(ens["experts"]), "--path-to-clusterer", str(ens["clusterer"])]
    rc, _, err = _run(base, capsys)
    assert rc == 2 and "--prompt" in err and "--input" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    rc, _, err = _run(base + ["--input", str(bad)], capsys)
    assert rc == 2 and f"{bad}:2:" in err and len(err.strip().splitlines()) == 1
    bad.write_text('{"prompt": "ok"}\n{"other": 1}\n')
    rc, _, err = _run(base + ["--input", str(bad)], capsys)
    assert rc == 2 and f"{bad}:2:" in err and '"prompt"' in err
    make_expert(tmp_path / "mlm" / "x.cluster0", ens["tok"], 0, 1, seed=1, objective="mlm", consolidated=True)
    rc, _, err = _run(["--experts-dir", str(tmp_path / "mlm"), "--prompt", "x"], capsys)
    assert rc == 2 and "masked LM" in err and "generation" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(["--experts-dir", str(ens["experts"]), "--prompt", "x"], capsys)
    assert rc == 2 and "clusterer" in err  # two experts, nothing to route them by
    rc, _, err = _run(base + ["--prompt", "x", "--max-new-tokens", "0"], capsys)
    assert rc == 2 and "--max-new-tokens" in err


def test_lm_eval_command_without_the_extra_is_one_clear_line(monkeypatch, capsys):
    import sys

    from xlbtm.cli import main_wrapper
    from xlbtm.scripts.lm_eval import main

    monkeypatch.delitem(sys.modules, "xlbtm.ensemble.harness", raising=False)
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    assert main_wrapper("lm_eval", main, ["--model", "xlbtm"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'xlbtm[eval]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("prompt,new_word", [("Жэ кёль син", " фуйщэйху"), ("Das ist ein", " Test")])
def test_a_continuation_that_starts_a_new_word_keeps_its_space(ens, prompt, new_word):
    """SentencePiece decodes a leading word boundary to nothing: the continuation is decoded in the context of
    its prompt, so that prompt + continuation reads as the whole sequence decodes (two scripts)."""
    from xlbtm.ensemble.generate import continuation_text

    tok = ens["tok"]
    p, new = tok.encode(prompt), tok.encode(new_word)
    assert tok.decode(new) == new_word.strip()  # decoded alone, the space is gone
    assert prompt + continuation_text(tok, p, new) == tok.decode(p + new) == prompt + new_word
    lm = _lm(ens)
    for g, ids in zip(lm.generate([p, p + new], max_new_tokens=6), (p, p + new)):  # what generate returns
        assert g.text == tok.decode(ids + g.ids)[len(tok.decode(ids)) :]


# ---------------------------------------------------------------------------------- lang routing, one model


def test_generate_lang_routes_each_prompt_to_its_languages_expert(ens, tmp_path, capsys):
    """X-ELM's lang routing in generate: a prompt goes wholly to the expert of its language's cluster, so its
    generation is that expert's own (and --lang / a line's "lang" field say which language)."""
    import shutil

    from xlbtm.cluster.train import train_typological_clusterer

    typo = train_typological_clusterer(["de", "fr", "en"], 2, tmp_path / "typo")
    assert typo.lang_to_cluster["de"] != typo.lang_to_cluster["fr"]
    experts = tmp_path / "experts"
    shutil.copytree(ens["experts"], experts)
    for ej in experts.glob("*/expert.json"):
        ej.write_text(json.dumps({**json.loads(ej.read_text()), "clusterer_fingerprint": typo.fingerprint}))
    base = ["--experts-dir", str(experts), "--path-to-clusterer", str(tmp_path / "typo"), "--max-new-tokens", "8"]
    single = {}
    for lang in ("de", "fr"):
        k = typo.lang_to_cluster[lang]
        rc, out, err = _run(
            ["--model-paths", str(experts / f"run.cluster{k}"), "--prompt", PROMPTS[2], "--max-new-tokens", "8"],
            capsys,
        )
        assert rc == 0, err
        single[lang] = out.splitlines()[0]
        rc, out, err = _run(base + ["--ensemble-type", "lang", "--lang", lang, "--prompt", PROMPTS[2]], capsys)
        assert rc == 0, err
        assert out.splitlines()[0] == single[lang] and f"expert{k} 1.00" in out
    assert single["de"] != single["fr"]  # the test can tell the experts apart
    inp = tmp_path / "p.jsonl"
    inp.write_text(json.dumps({"prompt": PROMPTS[2], "lang": "fr"}) + "\n" + json.dumps({"prompt": PROMPTS[2]}) + "\n")
    rc, out, err = _run(
        base + ["--ensemble-type", "lang", "--input", str(inp), "--lang", "de", "--output", str(tmp_path / "o.jsonl")],
        capsys,
    )
    assert rc == 0, err
    res = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["lang"] for r in res] == ["fr", "de"]  # the line's own, else --lang
    assert [PROMPTS[2] + r["generation"] for r in res] == [single["fr"], single["de"]]
    # what cannot be routed is one line: no language, an unknown one, --lang without lang routing
    for argv, needle in (
        (["--ensemble-type", "lang", "--prompt", "x"], "--lang"),
        (["--ensemble-type", "lang", "--prompt", "x", "--lang", "xx"], "knows de, en, fr"),
        (["--ensemble-type", "lang", "--input", str(inp)], f"{inp}:2:"),
        (["--lang", "de", "--prompt", "x"], "--ensemble-type lang"),
    ):
        rc, _, err = _run(base + argv, capsys)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = _run(base + ["--ensemble-type", "clustering", "--prompt", "x"], capsys)
    assert rc == 2 and "--ensemble-type lang" in err  # a typological clusterer has no centroids to route by


def test_generate_one_model_without_expert_json_given_its_tokenizer(ens, tmp_path, capsys):
    from xlbtm.formats.consolidated import load_consolidated, save_consolidated

    src = ens["experts"] / "run.cluster1" / "consolidated.pt"
    sd, args, _ = load_consolidated(src)
    alone = tmp_path / "elsewhere" / "model.pt"
    save_consolidated(alone, sd, args)  # a converted checkpoint: weights and architecture, no expert.json
    common = ["--prompt", PROMPTS[0], "--max-new-tokens", "6"]
    rc, ref, err = _run(["--model-paths", str(src), *common], capsys)
    assert rc == 0, err
    rc, _, err = _run(["--model-paths", str(alone), *common], capsys)
    assert rc == 2 and "--tokenizer" in err and len(err.strip().splitlines()) == 1, err
    rc, out, err = _run(["--model-paths", str(alone), "--tokenizer", str(ens["tok"].path), *common], capsys)
    assert rc == 0, err
    assert out.splitlines()[0] == ref.splitlines()[0]
    rc, _, err = _run(["--model-paths", str(src), "--tokenizer", str(ens["tok"].path), *common], capsys)
    assert rc == 2 and "drop --tokenizer" in err


def test_generate_output_never_replaces_another_file(ens, tmp_path, capsys):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("mine\n")
    argv = ["--model-paths", str(ens["experts"] / "run.cluster0"), "--prompt", "x", "--max-new-tokens", "2"]
    rc, _, err = _run(argv + ["--output", str(notes)], capsys)
    assert rc == 2 and "--output" in err and notes.read_text() == "mine\n"
    out = tmp_path / "gen.jsonl"
    assert _run(argv + ["--output", str(out)], capsys)[0] == 0
    assert _run(argv + ["--output", str(out)], capsys)[0] == 0  # its own earlier output: replaced
    other = ["--model-paths", str(ens["experts"] / "run.cluster1"), "--prompt", "x", "--max-new-tokens", "2"]
    rc, _, err = _run(other + ["--output", str(out)], capsys)
    assert rc == 2 and "other inputs" in err
