"""A tiny trained-clusterer ensemble on disk for the generation and lm-eval tests: demo corpus, SentencePiece
tokenizer, a subword TF-IDF clusterer, and K random experts whose expert.json names that clusterer."""

from __future__ import annotations

from pathlib import Path

import torch


def sharpen(model, seed: int, scale: float = 0.3):
    """Random weights everywhere (LayerNorm gains around 1) at a scale that makes an expert's distributions
    peaked (entropy ~3.5 nats of ~6.8) and experts disagree: mixing logits instead of probabilities, or a wrong
    weight, then changes the scores visibly; a fresh init predicts nearly uniform distributions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * scale + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )
        model.embed_tokens.weight[model.args.pad_id].zero_()
    return model


def build_ensemble(root: Path, K: int = 2, *, max_positions: int = 64, n_train: int = 120, seed: int = 0) -> dict:
    from test_ensemble import make_expert

    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.corpus import Corpus
    from xlbtm.demo_corpus import write_demo_corpus
    from xlbtm.models import build_model, get_preset
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    root = Path(root)
    write_demo_corpus(root / "data", n_train=n_train, n_valid=12, seed=seed)
    texts = [d.text for d in Corpus(root / "data").iter_documents("train")]
    tok = load_tokenizer(train_sentencepiece(texts, root / "tok", vocab_size=900, seed=0))
    clus, _ = train_tfidf_clusterer(root / "data", K, root / "clusterer", tokenizer=tok.path, max_docs=n_train)
    experts = root / "experts"
    args = get_preset("debug", vocab_size=tok.vocab_size, max_positions=max_positions)
    for k in range(K):
        torch.manual_seed(100 + k)
        state = sharpen(build_model(args), seed=200 + k).state_dict()
        make_expert(
            experts / f"run.cluster{k}",
            tok,
            k,
            K,
            seed=100 + k,
            fingerprint=clus.fingerprint,
            max_positions=max_positions,
            consolidated=True,
            state=state,
        )
    return {
        "root": root,
        "data": root / "data",
        "tok": tok,
        "clusterer": root / "clusterer",
        "clus": clus,
        "experts": experts,
        "K": K,
    }
