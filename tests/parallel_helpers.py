"""Tiny parallel and monolingual corpora (English -> German / French) for the TLM and parallel-clustering tests."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = {
    "en": "red green blue house tree water fire stone light night".split(),
    "de": "rot gruen blau haus baum wasser feuer stein licht nacht".split(),
    "fr": "rouge vert bleu maison arbre eau feu pierre lumiere nuit".split(),
}
# a language to grow an ensemble by (kept out of WORDS, whose words train the shared test tokenizers)
NEW_WORDS = {"es": "rojo verde azul casa arbol agua fuego piedra luz noche".split()}


def _sentence(lang: str, i: int, n: int) -> str:
    w = {**WORDS, **NEW_WORDS}[lang]
    return " ".join(w[(i * 3 + j * 7) % len(w)] for j in range(n))


def write_pairs(root: Path, n: int = 40, split: str = "train", langs=("de", "fr")) -> Path:
    """A tiny English -> German / French corpus in the gettext layout: <root>/<split>/00000/<lang>.jsonl."""
    d = root / split / "00000"
    d.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        with open(d / f"{lang}.jsonl", "w") as f:
            for i in range(n):
                k = 1 + i % 6
                f.write(
                    json.dumps(
                        {
                            "src": _sentence("en", i, k),
                            "tgt": _sentence(lang, i, k),
                            "src_lang": "en",
                            "tgt_lang": lang,
                            "domain": "test",
                            "id": i,
                        }
                    )
                    + "\n"
                )
    return root


def write_mono(root: Path, n: int = 60, langs=("en", "de", "fr")) -> Path:
    for split, m in (("train", n), ("valid", 12)):
        d = root / split / "00000"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "mono.jsonl", "w") as f:
            for i in range(m):
                lang = langs[i % len(langs)]
                f.write(json.dumps({"text": _sentence(lang, i, 12), "lang": lang}) + "\n")
    return root
