"""Tokenizers: load a seed's tokenizer from a local Hugging Face directory; train a small SentencePiece.

Every xlbtm model uses the fairseq dictionary layout that XGLM and XLM-R ship with:
`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then SentencePiece piece `i` (for i >= 3) at id `i + 1`
(the "fairseq offset"), then extra symbols at the end (`<mask>` for XLM-R, `<madeupword0..6>` for XGLM).

Why not just `AutoTokenizer.from_pretrained`: transformers 5.x builds XGLM's tokenizer from `tokenizer.json`
only. Given a directory that holds just `sentencepiece.bpe.model` (how metaseq/fairseq checkpoints ship it)
it silently returns an 11-token tokenizer that maps every word to `<unk>`. `load_tokenizer` detects a
tokenizer whose vocabulary is far smaller than the SentencePiece model next to it and rebuilds it from
the `.model` file with the fairseq offset; without a `.model` to rebuild from it raises `InputError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlbtm.errors import InputError

# Where metaseq/fairseq/HF put the SentencePiece model, in the order we look for it.
SP_MODEL_NAMES = ("sentencepiece.bpe.model", "spiece.model", "sentencepiece.model", "tokenizer.model")
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3
FAIRSEQ_OFFSET = 1  # sp piece i -> id i + 1 (sp's own <unk>,<s>,</s> at 0..2 are replaced by the 4 above)
XGLM_MADEUP = tuple(f"<madeupword{i}>" for i in range(7))
MASK = "<mask>"


@dataclass
class Tokenizer:
    """A thin, fast wrapper around a transformers tokenizer with the fairseq special ids.

    `encode` never adds special tokens: the data pipeline decides where `</s>` / `<s>` go.
    """

    hf: Any  # transformers tokenizer (TokenizersBackend); `hf.backend_tokenizer` is the Rust tokenizer
    path: Path
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self):
        self._backend = self.hf.backend_tokenizer

    # ids ----------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int:
        return self.hf.bos_token_id

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id

    @property
    def eos_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def unk_id(self) -> int:
        return self.hf.unk_token_id

    @property
    def mask_id(self) -> int | None:
        tid = self._backend.token_to_id(MASK)
        return tid

    # text <-> ids -------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The Rust batch encoder (threads when TOKENIZERS_PARALLELISM allows), no per-text Python overhead.
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, tid: int) -> str | None:
        return self._backend.id_to_token(tid)

    # identity -----------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the ids: the tokenization model (pieces, scores, unk) and added tokens.

        Computed from the loaded tokenizer, not from file bytes, so re-saving the same tokenizer (or
        loading it from `sentencepiece.bpe.model` vs `tokenizer.json`) gives the same fingerprint.
        """
        if self._fingerprint is None:
            from xlbtm.io import sha256_json

            state = json.loads(self._backend.to_str())
            added = sorted((t["id"], t["content"]) for t in state.get("added_tokens", []))
            model = state["model"]
            self._fingerprint = sha256_json({"model": model, "added": added})
        return self._fingerprint

    def __len__(self) -> int:
        return self.vocab_size


# ------------------------------------------------------------------------------------------------ loading


def find_sp_model(path: Path) -> Path | None:
    for name in SP_MODEL_NAMES:
        if (path / name).is_file():
            return path / name
    return None


def read_sp_model(model_path: Path):
    """Parse a SentencePiece `.model` file (a protobuf; parsing runs no code)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()  # type: ignore[attr-defined]  # protobuf-generated module: no stubs for its messages
    try:
        proto.ParseFromString(Path(model_path).read_bytes())
    except Exception as e:  # protobuf raises DecodeError; keep the message, name the file
        raise InputError(f"not a SentencePiece model ({e})", model_path) from None
    if len(proto.pieces) < 4:
        raise InputError(f"SentencePiece model has only {len(proto.pieces)} pieces", model_path)
    return proto


def detect_style(path: Path) -> str:
    """'xglm' or 'xlmr' from config.json / tokenizer_config.json; XLM-R (with <mask>) when unknown."""
    for name, key in (("tokenizer_config.json", "tokenizer_class"), ("config.json", "model_type")):
        f = path / name
        if f.is_file():
            try:
                value = str(json.loads(f.read_text(encoding="utf-8")).get(key, "")).lower()
            except (ValueError, OSError):
                continue
            if "xglm" in value:
                return "xglm"
            if "roberta" in value or "xlm" in value:
                return "xlmr"
    return "xlmr"


def fairseq_vocab(proto, style: str = "xlmr") -> list[tuple[str, float]]:
    """Unigram vocab in fairseq id order: 4 specials, sp pieces 3.. (id = sp id + 1), then the tail."""
    types = proto.pieces[0].type, proto.pieces[1].type, proto.pieces[2].type
    UNKNOWN, CONTROL = 2, 3
    if types != (UNKNOWN, CONTROL, CONTROL):
        raise InputError(
            "SentencePiece model does not have the fairseq layout (<unk>, <s>, </s> at ids 0..2); "
            "train it with SentencePiece's default unk_id=0 bos_id=1 eos_id=2"
        )
    vocab = [(t, 0.0) for t in FAIRSEQ_SPECIALS]
    vocab += [(p.piece, float(p.score)) for p in proto.pieces[3:]]
    tail = XGLM_MADEUP if style == "xglm" else (MASK,)
    vocab += [(t, 0.0) for t in tail]
    return vocab


def tokenizer_from_sp_model(model_path: Path, style: str = "xlmr"):
    """Build the transformers tokenizer the way XGLMTokenizer / XLMRobertaTokenizer (slow) did."""
    proto = read_sp_model(model_path)
    vocab = fairseq_vocab(proto, style)
    charsmap = bytes(proto.normalizer_spec.precompiled_charsmap) or None
    # (transformers annotates _spm_precompiled_charsmap as str; tokenizers' Precompiled takes the bytes)
    if style == "xglm":
        from transformers import XGLMTokenizer

        return XGLMTokenizer(vocab=vocab, _spm_precompiled_charsmap=charsmap)  # type: ignore[arg-type]
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer(vocab=vocab, _spm_precompiled_charsmap=charsmap)  # type: ignore[arg-type]


def _probe_text(proto, n: int = 64) -> str:
    """Words made of the model's own normal pieces: a tokenizer that maps all of them to <unk> is broken."""
    words = [p.piece.replace("\u2581", "") for p in proto.pieces[3:] if p.type == 1]
    words = [w for w in words if w.strip()]
    return " ".join(words[:n])


def _is_broken(hf, sp_model: Path | None) -> str | None:
    """Why a loaded tokenizer is unusable, or None. Catches transformers 5.x's silent `<unk>`-only tokenizer."""
    n = len(hf)
    if sp_model is not None:
        proto = read_sp_model(sp_model)
        n_pieces = len(proto.pieces)
        if n < n_pieces:
            return f"vocabulary has {n} tokens but {sp_model.name} has {n_pieces} pieces"
        probe = _probe_text(proto)
        if probe:
            ids = hf.backend_tokenizer.encode(probe, add_special_tokens=False).ids
            if ids and all(i == hf.unk_token_id for i in ids):
                return f"every piece of {sp_model.name} encodes to <unk>"
        return None
    specials = set(hf.all_special_ids)
    if n <= len(specials) + 8 or all(i in specials for i in range(min(n, 64))):
        return f"vocabulary has only {n} tokens, all special"
    return None


def _check_special_ids(hf, path: Path) -> None:
    got = {t: hf.convert_tokens_to_ids(t) for t in FAIRSEQ_SPECIALS}
    want = {t: i for i, t in enumerate(FAIRSEQ_SPECIALS)}
    ids = (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id)
    if got != want or ids != (0, 1, 2, 3):
        raise InputError(
            f"tokenizer does not use the fairseq special ids <s>=0 <pad>=1 </s>=2 <unk>=3 (got {got}, "
            f"bos/pad/eos/unk ids {ids}); xlbtm models (XGLM / XLM-R) need that layout",
            path,
        )


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a local HF directory (tokenizer.json and/or sentencepiece.bpe.model) or a `.model`.

    With a `.model` and no `tokenizer.json`, the tokenizer is built from the `.model` directly (XGLM style if
    config.json / tokenizer_config.json says xglm, else XLM-R style with `<mask>`). With `tokenizer.json`
    it is loaded by transformers and checked; a broken load is rebuilt from the `.model` or rejected.
    """
    from xlbtm.cli import get_logger

    log = get_logger("tokenizer")
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(".model"):
            raise InputError("expected a tokenizer directory or a SentencePiece .model file", path)
        hf = tokenizer_from_sp_model(path, detect_style(path.parent))
        _check_special_ids(hf, path)
        return Tokenizer(hf=hf, path=path)
    if not path.is_dir():
        raise InputError("tokenizer directory not found", path)

    sp_model = find_sp_model(path)
    style = detect_style(path)
    if not (path / "tokenizer.json").is_file():
        if sp_model is None:
            raise InputError(
                "no tokenizer here: expected tokenizer.json or sentencepiece.bpe.model "
                f"(one of {', '.join(SP_MODEL_NAMES)})",
                path,
            )
        hf = tokenizer_from_sp_model(sp_model, style)
    else:
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError ...)
            if sp_model is None:
                raise InputError(f"transformers cannot load this tokenizer: {e}", path) from None
            log.warning("transformers cannot load %s (%s); building it from %s", path, e, sp_model.name)
            hf = tokenizer_from_sp_model(sp_model, style)
        else:
            why = _is_broken(hf, sp_model)
            if why is not None:
                if sp_model is None:
                    raise InputError(
                        f"transformers built a broken tokenizer ({why}); add the seed's "
                        "sentencepiece.bpe.model to this directory so xlbtm can rebuild it",
                        path,
                    )
                log.warning(
                    "tokenizer loaded by transformers from %s is broken (%s); rebuilding it from %s "
                    "with the fairseq id offset",
                    path,
                    why,
                    sp_model.name,
                )
                hf = tokenizer_from_sp_model(sp_model, style)
    if not hasattr(hf, "backend_tokenizer"):
        raise InputError("only fast (tokenizers-backed) tokenizers are supported", path)
    why = _is_broken(hf, sp_model)
    if why is not None:
        raise InputError(f"unusable tokenizer: {why}", path)
    _check_special_ids(hf, path)
    return Tokenizer(hf=hf, path=path)


# ----------------------------------------------------------------------------------------------- training


def _sentences(texts: Iterable[str], max_chars: int) -> Iterable[str]:
    """Lines of the documents: SentencePiece silently drops 'sentences' longer than max_sentence_length."""
    for text in texts:
        for line in text.split("\n"):
            line = line.strip()
            if line:
                yield line[:max_chars]


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    seed: int = 0,
    *,
    character_coverage: float = 0.9995,
    max_sentences: int = 200_000,
    style: str = "xlmr",
    owner: dict | None = None,
) -> Path:
    """Train a SentencePiece unigram model on `texts` and save an HF tokenizer directory at `out_dir`
    (`owner`: who wrote it, recorded inside: `xlbtm.io.write_output_record`).

    The directory holds `sentencepiece.bpe.model` (the fairseq artifact), `tokenizer.json` +
    `tokenizer_config.json` (what `AutoTokenizer` reads) and `xlbtm_tokenizer.json` (how it was trained).
    Ids follow the fairseq layout; `style="xlmr"` appends `<mask>`, `style="xglm"` XGLM's 7 madeup words
    and `<mask>`. `vocab_size` is a soft limit (tiny corpora give fewer pieces instead of an error).
    Same texts + seed + vocab_size => identical files (single-threaded training).
    """
    import io
    import re

    import sentencepiece as spm

    from xlbtm.cli import get_logger
    from xlbtm.io import atomic_dir, write_json, write_output_record

    if style not in ("xlmr", "xglm"):
        raise ValueError(f"style must be 'xlmr' or 'xglm', not {style!r}")
    out_dir = Path(out_dir)
    max_chars = 4000  # below SentencePiece's max_sentence_length (4192 bytes) for most scripts
    sentences = []
    for s in _sentences(texts, max_chars):
        sentences.append(s)
        if len(sentences) >= max_sentences:
            break
    if not sentences:
        raise InputError("no text to train a tokenizer on")

    def _train(n: int) -> bytes:
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=n,
            model_type="unigram",
            character_coverage=character_coverage,
            hard_vocab_limit=False,
            num_threads=1,
            max_sentence_length=16384,
            shuffle_input_sentence=False,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
        return model.getvalue()

    try:
        model_bytes = _train(vocab_size)
    except RuntimeError as e:
        # Many scripts (CJK) need more single characters than a tiny vocab holds: grow it rather than fail.
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m is None:
            raise
        grown = int(m.group(2)) + max(64, vocab_size // 4)
        get_logger("tokenizer").warning(
            "vocab_size %d is below the %s characters this sample needs; training with %d",
            vocab_size,
            m.group(2),
            grown,
        )
        model_bytes = _train(grown)

    with atomic_dir(out_dir) as tmp:
        sp_path = tmp / "sentencepiece.bpe.model"
        sp_path.write_bytes(model_bytes)
        hf = tokenizer_from_sp_model(sp_path, style)
        if style == "xglm":
            hf.add_special_tokens({"mask_token": MASK})
        hf.save_pretrained(str(tmp))
        write_json(
            tmp / "xlbtm_tokenizer.json",
            {
                "kind": "sentencepiece-unigram",
                "style": style,
                "requested_vocab_size": vocab_size,
                "sp_pieces": len(read_sp_model(sp_path).pieces),
                "vocab_size": len(hf),
                "seed": seed,
                "num_sentences": len(sentences),
                "character_coverage": character_coverage,
            },
        )
        if owner is not None:
            write_output_record(tmp, owner, is_dir=True)
    return out_dir


def reservoir_sample(texts: Iterable[str], k: int, seed: int = 0) -> list[str]:
    """A uniform sample of k texts from a stream (reservoir sampling), in stream order; deterministic.
    (Sampling documents from corpus files for clustering is `xlbtm.cluster.train.sample_documents`: it reads
    only the chosen lines; the tokenizer's sample streams the split once.)"""
    import random

    rng = random.Random(f"xlbtm-tokenizer-sample|{seed}")
    reservoir: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        if i < k:
            reservoir.append((i, text))
        else:
            j = int(rng.random() * (i + 1))
            if j < k:
                reservoir[j] = (i, text)
    return [t for _, t in sorted(reservoir)]


def train_tokenizer_from_corpus(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    vocab_size: int = 8000,
    sample_docs: int = 20000,
    seed: int = 0,
    style: str = "xlmr",
    skip_bad_lines: bool = False,
    owner: dict | None = None,
) -> Path:
    """`train_sentencepiece` on a uniform sample of `sample_docs` documents of a corpus split. With `owner`
    (the train_tokenizer command's), an existing `out_dir` is replaced only when it is that owner's earlier
    output (`xlbtm.io.check_replaceable`): another run's tokenizer, which its experts name, is kept."""
    from xlbtm.io import check_replaceable, refuse_overlap

    refuse_overlap({"--out": out_dir}, {"--data-dir": data_dir})
    from xlbtm.corpus import Corpus

    corpus = Corpus(data_dir, skip_bad_lines=skip_bad_lines)
    if owner is not None:
        check_replaceable(out_dir, "--out", owner, is_dir=True)
    texts = reservoir_sample((d.text for d in corpus.iter_documents(split)), sample_docs, seed)
    return train_sentencepiece(texts, out_dir, vocab_size=vocab_size, seed=seed, style=style, owner=owner)
