"""A deterministic synthetic multilingual corpus in the c-BTM layout, so quickstart and tests need no download.

What it models (so clustering has something real to find, and is not trivial):
- several "languages", each with its own script (Latin x2, Cyrillic, Greek, Arabic, CJK, Devanagari, Hangul),
  its own phonotactics and word forms; `lang` carries a real ISO code of a language written in that script,
  so the typological clusterer (lang2vec) can place it;
- one shared concept inventory: every language has its own word for each concept, and word frequencies
  follow a Zipf law over concepts;
- shared topics: a document is about one topic, which raises the frequency of that topic's concepts in
  every language and adds shared Latin-script named entities (`linux`, `tokyo` ...) across languages.
  So a clusterer may group by language, by topic, or both.

Files (same `seed` and sizes => byte-identical output):
    <out>/train/00000/demo.jsonl ... <out>/train/<num_shards-1>/demo.jsonl
    <out>/valid/demo.jsonl
    <out>/demo_corpus.json        (what was generated)
Lines: `{"text": ..., "lang": "ru", "id": "train-000017", "topic": "music"}`.
Only `random.Random(<str seed>).random()` is used: stable across Python versions and platforms.
"""

from __future__ import annotations

import bisect
import json
import os
import random
from pathlib import Path

from xlbtm.errors import UsageError

# --------------------------------------------------------------------------------------------- languages

# code -> (script name, onsets, nuclei, codas, word separator, sentence end, capitalize)
# Words are onset+nucleus(+coda) syllables; scripts without case or spaces behave like real ones.
LANGUAGES: dict[str, dict] = {
    "en": dict(
        script="Latin",
        onsets="b c d f g h l m n p r s t w th sh st br cl".split(),
        nuclei="a e i o u ee ou ea".split(),
        codas=["", "", "n", "t", "s", "ck", "nd", "ll"],
        sep=" ",
        end=".",
        cap=True,
    ),
    "de": dict(
        script="Latin",
        onsets="b d f g h k l m n p r s t w z sch schw st kr gr pf".split(),
        nuclei="a e i o u ä ö ü ei au ie".split(),
        codas=["", "", "n", "t", "ß", "ch", "ng", "rz", "lt"],
        sep=" ",
        end=".",
        cap=True,
    ),
    "ru": dict(
        script="Cyrillic",
        onsets="б в г д ж з к л м н п р с т ф х ц ч ш щ ст пр".split(),
        nuclei="а е и о у ы э ю я ё".split(),
        codas=["", "", "н", "т", "й", "ль", "ск", "в"],
        sep=" ",
        end=".",
        cap=True,
    ),
    "el": dict(
        script="Greek",
        onsets="β γ δ ζ θ κ λ μ ν ξ π ρ σ τ φ χ ψ στ".split(),
        nuclei="α ε η ι ο υ ω αι ει ου ά έ ί ό".split(),
        codas=["", "", "ς", "ν", "ρ", "ς", "ς"],
        sep=" ",
        end=".",
        cap=True,
    ),
    "ar": dict(
        script="Arabic",
        onsets="ب ت ث ج ح خ د ذ ر ز س ش ص ض ط ع غ ف ق ك ل م ن ه و ي".split(),
        nuclei=["ا", "و", "ي", "", "", ""],
        codas=["", "", "ة", "ن", "ت", "ل"],
        sep=" ",
        end=".",
        cap=False,
    ),
    "zh": dict(script="Han", onsets=None, nuclei=None, codas=None, sep="", end="。", cap=False),
    "hi": dict(
        script="Devanagari",
        onsets="क ख ग घ च ज ट ड त द न प ब म य र ल व स ह".split(),
        nuclei=["", "ा", "ि", "ी", "ु", "े", "ो"],
        codas=["", "", "ं", "न", "र"],
        sep=" ",
        end="।",
        cap=False,
    ),
    "ko": dict(script="Hangul", onsets=None, nuclei=None, codas=None, sep=" ", end=".", cap=False),
}
DEFAULT_LANGS = ("en", "de", "ru", "el", "ar", "zh")

# topic -> shared named entities (Latin script in every language, like names and terms in real text)
TOPICS: dict[str, list[str]] = {
    "computing": "linux kernel gpu python http tcp ssh git unicode cuda".split(),
    "cooking": "pasta sushi curry tofu wasabi paprika kimchi hummus falafel ramen".split(),
    "sports": "fifa olympics nba marathon wimbledon tour uefa messi serena bolt".split(),
    "music": "mozart jazz bach beatles opera piano violin kpop bowie vivaldi".split(),
    "travel": "tokyo paris cairo delhi seoul athens moscow berlin lima sydney".split(),
}

NUM_CONCEPTS = 2500
CONCEPTS_PER_TOPIC = 150
ZIPF_EXPONENT = 1.1


def _pick(rng: random.Random, seq):
    return seq[int(rng.random() * len(seq))]


def _syllable(rng: random.Random, spec: dict, lang: str) -> str:
    script = spec["script"]
    if script == "Han":
        # 600 ideographs: enough for thousands of 1-3 character words, few enough for a small demo vocab
        return chr(0x4E00 + int(rng.random() * 600))
    if script == "Hangul":  # compose a syllable block (lead, vowel, tail), from a subset of each
        lead, vowel = int(rng.random() * 12), int(rng.random() * 10)
        tail = 0 if rng.random() < 0.6 else _pick(rng, (4, 8, 16, 21))
        return chr(0xAC00 + (lead * 21 + vowel) * 28 + tail)
    return _pick(rng, spec["onsets"]) + _pick(rng, spec["nuclei"]) + _pick(rng, spec["codas"])


def make_lexicon(lang: str, seed: int, num_concepts: int = NUM_CONCEPTS) -> list[str]:
    """One distinct word per concept. Frequent concepts get shorter words (as in natural languages)."""
    spec = LANGUAGES[lang]
    rng = random.Random(f"xlbtm-demo|{seed}|lexicon|{lang}")
    words: list[str] = []
    seen: set[str] = set()
    for c in range(num_concepts):
        base = 1 if c < 60 else 2 if c < 800 else 3
        for attempt in range(100):
            n = base + (1 if rng.random() < 0.3 else 0) + attempt // 20
            w = "".join(_syllable(rng, spec, lang) for _ in range(n))
            if w not in seen:
                break
        seen.add(w)
        words.append(w)
    return words


def _zipf_cdf(n: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    acc, out = 0.0, []
    for r in range(1, n + 1):
        acc += 1.0 / r**exponent
        out.append(acc)
    return [x / acc for x in out]


def _sample(rng: random.Random, cdf: list[float]) -> int:
    return min(bisect.bisect_left(cdf, rng.random()), len(cdf) - 1)


class DemoGenerator:
    """Generates documents; document `i` of a split depends only on (seed, split, i), not on corpus size."""

    def __init__(self, langs=DEFAULT_LANGS, seed: int = 0):
        unknown = [x for x in langs if x not in LANGUAGES]
        if unknown or not langs:
            raise UsageError(f"--langs: unknown language(s) {unknown}; choose from {', '.join(LANGUAGES)}")
        self.langs = list(langs)
        self.seed = seed
        self.lexicons = {lang: make_lexicon(lang, seed) for lang in self.langs}
        self.topics = list(TOPICS)
        rng = random.Random(f"xlbtm-demo|{seed}|topics")
        # each topic owns a disjoint block of mid-frequency concepts (ranks 200..), shuffled per seed
        pool = list(range(200, NUM_CONCEPTS))
        for i in range(len(pool) - 1, 0, -1):  # Fisher-Yates with random() only
            j = int(rng.random() * (i + 1))
            pool[i], pool[j] = pool[j], pool[i]
        self.topic_concepts = {
            t: pool[k * CONCEPTS_PER_TOPIC : (k + 1) * CONCEPTS_PER_TOPIC] for k, t in enumerate(self.topics)
        }
        self.general_cdf = _zipf_cdf(NUM_CONCEPTS)
        self.topic_cdf = _zipf_cdf(CONCEPTS_PER_TOPIC)
        self.entity_cdf = _zipf_cdf(len(next(iter(TOPICS.values()))))

    def document(self, split: str, index: int) -> dict:
        rng = random.Random(f"xlbtm-demo|{self.seed}|{split}|{index}")
        lang = _pick(rng, self.langs)
        # a mildly skewed topic distribution, different per language, so topics and languages are not
        # independent but not aligned either
        k = self.langs.index(lang)
        weights = [1.0 + (2.0 if (t + k) % len(self.topics) == 0 else 0.0) for t in range(len(self.topics))]
        r, acc, topic = rng.random() * sum(weights), 0.0, self.topics[-1]
        for t, w in zip(self.topics, weights):
            acc += w
            if r < acc:
                topic = t
                break
        spec, lex = LANGUAGES[lang], self.lexicons[lang]
        concepts, entities = self.topic_concepts[topic], TOPICS[topic]
        sentences = []
        for _ in range(3 + int(rng.random() * 8)):
            words = []
            for _ in range(5 + int(rng.random() * 11)):
                u = rng.random()
                if u < 0.30:
                    words.append(lex[concepts[_sample(rng, self.topic_cdf)]])
                elif u < 0.34:
                    words.append(entities[_sample(rng, self.entity_cdf)])
                elif u < 0.36:
                    words.append(str(int(rng.random() * 2000)))
                else:
                    words.append(lex[_sample(rng, self.general_cdf)])
            if spec["cap"] and words[0][:1].isalpha():
                words[0] = words[0][:1].upper() + words[0][1:]
            sentences.append(spec["sep"].join(words) + spec["end"])
        # a newline every few sentences, like paragraphs
        text = ""
        for j, s in enumerate(sentences):
            if j:
                text += "\n" if j % 4 == 0 else spec["sep"] if spec["sep"] else ""
            text += s
        return {"text": text, "lang": lang, "id": f"{split}-{index:06d}", "topic": topic}


def _write_jsonl(path: Path, docs) -> int:
    from xlbtm.io import atomic_open

    n = 0
    with atomic_open(path, "wb") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
    return n


def write_demo_corpus(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_valid: int = 200,
    seed: int = 0,
    *,
    num_shards: int = 2,
    langs=DEFAULT_LANGS,
) -> dict:
    """Write the demo corpus to `out_dir` (replaced whole if it is an earlier demo corpus); return a summary.

    Train documents are dealt round-robin over `num_shards` shard dirs (`00000`, `00001`, ...).
    """
    from xlbtm.io import atomic_dir, write_json

    if n_train < 1 or n_valid < 1:
        raise UsageError("--num-train-docs and --num-valid-docs must be >= 1")
    if num_shards < 1:
        raise UsageError("--num-shards must be >= 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "demo_corpus.json").is_file():
        raise UsageError(f"--out {out_dir} exists and is not a demo corpus; choose an empty or new directory")

    gen = DemoGenerator(langs, seed)
    train = [gen.document("train", i) for i in range(n_train)]
    valid = [gen.document("valid", i) for i in range(n_valid)]

    def counts(docs, key):
        c: dict[str, int] = {}
        for d in docs:
            c[d[key]] = c.get(d[key], 0) + 1
        return dict(sorted(c.items()))

    summary = {
        "generator": "xlbtm.demo_corpus",
        "seed": seed,
        "languages": list(gen.langs),
        "scripts": {lang: LANGUAGES[lang]["script"] for lang in gen.langs},
        "topics": gen.topics,
        "num_shards": num_shards,
        "train": {"documents": n_train, "per_lang": counts(train, "lang"), "per_topic": counts(train, "topic")},
        "valid": {"documents": n_valid, "per_lang": counts(valid, "lang"), "per_topic": counts(valid, "topic")},
    }

    # Build beside the target, then swap it in: a failed run never leaves a half-written corpus.
    with atomic_dir(out_dir) as tmp:
        files = []
        for s in range(num_shards):
            rel = f"train/{s:05d}/demo.jsonl"
            _write_jsonl(tmp / rel, train[s::num_shards])
            files.append(rel)
        _write_jsonl(tmp / "valid" / "demo.jsonl", valid)
        files.append("valid/demo.jsonl")
        summary["files"] = files
        summary["bytes"] = sum((tmp / f).stat().st_size for f in files)
        write_json(tmp / "demo_corpus.json", summary)
    summary["out_dir"] = str(out_dir)
    return summary
