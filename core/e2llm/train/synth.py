"""Synthetic long-document QA over real text, in the paper's JSONL format.

A sample is ``{"context", "prompt", "answer", "kind", "meta"}``; the first three keys are
what the paper's JSONL holds. ``context`` is several real documents joined paragraph by
paragraph up to a target length, with synthetic fact sentences inserted at recorded
character offsets. The facts use random entity names and values, so an answer cannot be
guessed from world knowledge: the model has to read the (compressed) context.

Kinds: ``single_fact`` (a RULER-style needle at a controlled depth), ``two_chunk`` (two
facts at least 40% of the context apart, both needed), ``topic`` (which title the context
covers), ``multi_fact`` (several needles, one asked: multi-key), ``aggregation`` (the
most often mentioned of several names), ``mention`` (which of four names the context
mentions once: the smallest question about content, answerable from one chunk),
``real_fact`` (a word the real text states once, asked as the blank of its own sentence:
nothing inserted), ``real_field`` (a field that structured real text states once, asked as
a reader would: who signed a changelog entry and when, a package's author or version, the
licence of a stanza of a Debian copyright file; only for such text) and ``unanswerable`` (a
fact about an entity the context never names, next to one about another entity; the answer
is :data:`UNANSWERABLE`).

Sample ``i`` of seed ``s`` is drawn from its own ``random.Random(f"{s}:{i}")``: it does not
depend on ``num_samples`` and never on the global RNG. Contexts use only the documents
passed in, so a document-level train/validation split gives held-out contexts.
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import random
import re
import tempfile
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from .corpus import Document, OnError, PathLike, check_on_error, iter_jsonl_records, report_data_error

DEFAULT_KINDS = ("single_fact", "two_chunk", "topic")
QA_KINDS = ("single_fact", "two_chunk", "topic", "multi_fact", "aggregation", "mention", "real_fact", "unanswerable")
# Kinds that need structured real text (changelogs, package metadata, Debian copyright files):
# not among QA_KINDS, which any prose can fill.
STRUCTURED_KINDS = ("real_field",)
FACT_KINDS = frozenset({"single_fact", "two_chunk", "multi_fact", "aggregation", "mention", "real_fact", "real_field"})
# What a reader trained on ``unanswerable`` says when the document does not hold the answer.
UNANSWERABLE = "The document does not say."
MIN_TWO_CHUNK_GAP = 0.4  # fraction of the context between the two facts of a two_chunk sample
_MIN_WORDS_PER_DOC = 40
_NUM_TOPIC_CHOICES = 4

ADJECTIVES = (
    "amber", "azure", "bashful", "brave", "bright", "calm", "crimson", "curious", "dusty",
    "eager", "fierce", "gentle", "golden", "hidden", "hollow", "humble", "icy", "jolly",
    "lazy", "lively", "lucky", "misty", "noble", "olive", "pale", "quiet", "rapid",
    "restless", "rusty", "scarlet", "silent", "sleepy", "swift", "tiny", "velvet", "violet",
    "wandering", "wise", "zealous", "frosty",
)
NOUNS = (
    "badger", "beetle", "bison", "falcon", "ferret", "gecko", "heron", "jackal", "koala",
    "lemur", "lynx", "magpie", "marten", "moose", "narwhal", "ocelot", "octopus", "otter",
    "panther", "pelican", "penguin", "puffin", "raven", "salamander", "sparrow", "squirrel",
    "stork", "tapir", "tortoise", "walrus", "weasel", "wombat", "anchor", "compass",
    "kettle", "lantern", "locket", "spindle", "teapot", "telescope", "thimble", "trumpet",
    "violin", "wagon", "windmill", "zeppelin",
)
NUMBER_ATTRIBUTES = (
    "secret code", "access number", "serial number", "lucky number", "vault combination",
    "registration number", "locker number",
)
WORD_ATTRIBUTES = ("password", "code word", "favourite word", "secret name")
VALUE_WORDS = (
    "marigold", "quasar", "tundra", "saffron", "obsidian", "juniper", "zephyr", "lagoon",
    "paprika", "glacier", "nebula", "cobalt", "tamarind", "sequoia", "meridian", "monsoon",
    "halibut", "pistachio", "emerald", "falafel", "harpoon", "ravioli", "cinnamon",
    "porcelain", "trombone", "avalanche", "mandolin", "lighthouse", "origami", "walnut",
    "tangerine", "meteor", "cactus", "labyrinth", "sapphire", "gondola", "mosaic", "oregano",
    "pinecone", "hazelnut",
)
PLACE_HEADS = ("Var", "Kel", "Mor", "Tal", "Bren", "Zor", "Ost", "Dun", "Fal", "Quen", "Sol",
               "Yar", "Lin", "Grav", "Hol", "Nim", "Per", "Ruv", "Sav", "Tor")
PLACE_TAILS = ("na", "dor", "heim", "ova", "ith", "mar", "ello", "usk", "wyn", "ara", "ent", "ost")
MATERIALS = ("copper", "glass", "silk", "amber", "cedar", "marble", "clay", "silver", "woolen",
             "bronze", "ivory", "linen", "pewter", "jade", "oak")
ITEMS = ("bells", "lanterns", "scarves", "kites", "flutes", "masks", "baskets", "tiles",
         "compasses", "teapots", "mirrors", "drums", "rugs", "candles", "puppets")
# (first fact, second fact, question); the second fact holds the answer {thing}.
TWO_HOP_TEMPLATES = (
    ("The {entity} lives in the city of {place}.", "The city of {place} is known for its {thing}.",
     "What is the city where the {entity} lives known for?"),
    ("The {entity} keeps its treasure in the town of {place}.",
     "The town of {place} is famous for its {thing}.",
     "What is the town where the {entity} keeps its treasure famous for?"),
    ("The {entity} was born in the village of {place}.",
     "The village of {place} is proud of its {thing}.",
     "What is the village where the {entity} was born proud of?"),
)
MENTION_TEMPLATES = (
    "The {entity} was seen near the old mill that morning.",
    "Someone reported the {entity} again.",
    "The {entity} appeared in yet another report.",
    "Nobody could explain where the {entity} came from.",
    "Later that day the {entity} was spotted once more.",
    "The logbook mentions the {entity} here as well.",
)

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
# Where a sentence may be inserted: after a paragraph break, or where a sentence starts.
_BOUNDARY = re.compile(r"\n\n|(?<=[.!?])[\"')\]]*[ \n](?=[A-Z\"(])")


# ------------------------------------------------------------------------- text pieces


def _truncate_words(text: str, num_words: int, start: int = 0) -> str:
    """The first ``num_words`` words from ``start``, cut back to a sentence end if that
    keeps at least 70% of them (a window that ends mid-sentence reads as noise)."""
    spans = [m.span() for m in itertools.islice(_WORD.finditer(text, start), num_words)]
    if not spans:
        return ""
    for k in range(len(spans) - 1, int(0.7 * len(spans)) - 1, -1):
        if _SENTENCE_END.search(text, spans[k][0], spans[k][1]):
            return text[spans[0][0]: spans[k][1]]
    return text[spans[0][0]: spans[-1][1]]


def _lazy_permutation(n: int, rng: random.Random) -> Iterator[int]:
    """A random permutation of range(n) drawn one item at a time (Fisher-Yates), so
    taking a few items from a 20k-document corpus costs a few draws, not a shuffle."""
    swapped: dict[int, int] = {}
    for i in range(n):
        j = rng.randrange(i, n)
        yield swapped.get(j, j)
        swapped[j] = swapped.get(i, i)


def _mentions(haystack_lower: str, phrase: str) -> int:
    """How often ``phrase`` occurs as whole words (case-insensitive)."""
    pattern = r"(?<![A-Za-z0-9])" + re.escape(phrase.lower()) + r"(?![A-Za-z0-9])"
    return len(re.findall(pattern, haystack_lower))


def _insert_sentences(text: str, items: Sequence[tuple[float, str]]) -> tuple[str, list[int]]:
    """Insert each (depth, sentence) at the boundary nearest ``depth * len(text)``.

    Returns the new text and each sentence's character offset in it (in item order).
    At a paragraph break a sentence becomes its own paragraph; at a sentence start it
    joins the running paragraph.
    """
    boundaries = [0] + [m.end() for m in _BOUNDARY.finditer(text)] + [len(text)]
    placed = []
    for index, (depth, sentence) in enumerate(items):
        target = min(max(depth, 0.0), 1.0) * len(text)
        k = bisect_left(boundaries, target)
        candidates = boundaries[max(k - 1, 0): k + 1]
        position = min(candidates, key=lambda b: (abs(b - target), b))
        placed.append((position, index, sentence))
    pieces, offsets, cursor, length = [], [0] * len(items), 0, 0
    for position, index, sentence in sorted(placed):
        pieces.append(text[cursor:position])
        length += position - cursor
        cursor = position
        if position == len(text):
            prefix, suffix = "\n\n", ""
        elif position == 0 or text[position - 2: position] == "\n\n":
            prefix, suffix = "", "\n\n"
        else:
            prefix, suffix = "", " "
        offsets[index] = length + len(prefix)
        pieces.append(prefix + sentence + suffix)
        length += len(prefix + sentence + suffix)
    pieces.append(text[cursor:])
    return "".join(pieces), offsets


# ----------------------------------------------------------------------------- contexts


@dataclass
class _Pool:
    """The documents a call may draw from, with paragraphs split on first use."""

    docs: Sequence[Document]
    _paragraphs: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    def paragraphs(self, index: int) -> list[tuple[str, int]]:
        if index not in self._paragraphs:
            paragraphs = [p for p in self.docs[index].text.split("\n\n") if p.strip()]
            self._paragraphs[index] = [(p, len(p.split())) for p in paragraphs]
        return self._paragraphs[index]


@dataclass
class _Filler:
    text: str
    doc_indices: list[int]
    doc_starts: list[int]  # character offset where each document's text begins
    doc_words: list[int]


@dataclass
class _Request:
    rng: random.Random
    pool: _Pool
    num_words: int
    depth: Optional[float]
    num_needles: int


def _build_filler(request: _Request, reserve_words: int) -> _Filler:
    """Real text of about ``num_words - reserve_words`` words from several documents.

    Each document contributes a run of whole paragraphs (from its start half the time,
    so titles stay recognisable) capped at 20-60% of the length, so a context mixes
    several documents the way a long real input mixes sections. When that wastes too
    much of a small pool (a held-out split), whole documents are used instead.
    """
    num_words = max(request.num_words - reserve_words, 20)
    filler = _fill(request.rng, request.pool, num_words, whole_documents=False)
    filler = filler or _fill(request.rng, request.pool, num_words, whole_documents=True)
    if filler is None:
        raise ValueError(
            f"the {len(request.pool.docs)} documents hold too few words for a {num_words}-word "
            f"context; pass more documents or a smaller context_tokens")
    return filler


def _fill(rng: random.Random, pool: _Pool, num_words: int, whole_documents: bool) -> Optional[_Filler]:
    pieces: list[str] = []
    filler = _Filler("", [], [], [])
    offset, remaining = 0, num_words
    for index in _lazy_permutation(len(pool.docs), rng):
        if remaining < 20 and filler.doc_indices:
            break
        paragraphs = pool.paragraphs(index)
        if not paragraphs:
            continue
        if whole_documents:
            cap, first = remaining, 0
        else:
            cap = min(remaining, max(_MIN_WORDS_PER_DOC, int(num_words * rng.uniform(0.2, 0.6))))
            first = 0 if rng.random() < 0.5 else rng.randrange((len(paragraphs) + 1) // 2)
        taken, taken_words = [], 0
        for text, words in paragraphs[first:]:
            if taken_words >= cap:
                break
            if taken_words + words > cap:
                text = _truncate_words(text, cap - taken_words)
                words = len(text.split())
                if not words:
                    break
            taken.append(text)
            taken_words += words
        if not taken:
            continue
        if pieces:
            offset += 2
        filler.doc_indices.append(index)
        filler.doc_starts.append(offset)
        filler.doc_words.append(taken_words)
        block = "\n\n".join(taken)
        pieces.append(block)
        offset += len(block)
        remaining -= taken_words
    if remaining >= 20:
        return None
    filler.text = "\n\n".join(pieces)
    return filler


def _fresh(rng: random.Random, make: Callable[[random.Random], str], haystack_lower: str,
           taken: set[str]) -> str:
    """A new random phrase that occurs nowhere in the text and not among ``taken``."""
    for _ in range(1000):
        phrase = make(rng)
        if phrase not in taken and not _mentions(haystack_lower, phrase):
            taken.add(phrase)
            return phrase
    raise RuntimeError("could not draw a phrase absent from the context; word lists too small")


def _entity(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(10_000, 9_999_999))


def _value_word(rng: random.Random) -> str:
    return rng.choice(VALUE_WORDS)


def _place(rng: random.Random) -> str:
    return rng.choice(PLACE_HEADS) + rng.choice(PLACE_TAILS)


def _thing(rng: random.Random) -> str:
    return f"{rng.choice(MATERIALS)} {rng.choice(ITEMS)}"


def _attribute_and_value(rng: random.Random, haystack: str, taken: set[str]) -> tuple[str, str]:
    if rng.random() < 0.7:
        return rng.choice(NUMBER_ATTRIBUTES), _fresh(rng, _number, haystack, taken)
    return rng.choice(WORD_ATTRIBUTES), _fresh(rng, _value_word, haystack, taken)


def _sample(kind: str, context: str, prompt: str, answer: str, filler: _Filler,
            pool: _Pool, meta: dict[str, Any]) -> dict[str, Any]:
    if kind in FACT_KINDS:
        assert answer in context, f"{kind}: answer {answer!r} missing from its context"
    for offset, fact in zip(meta.get("fact_offsets", ()), meta.get("facts", ())):
        assert context.startswith(fact, offset), f"{kind}: fact offset {offset} is wrong"
    meta = {
        "doc_ids": [pool.docs[i].doc_id for i in filler.doc_indices],
        "titles": [pool.docs[i].title for i in filler.doc_indices],
        "num_words": len(context.split()),
        **meta,
    }
    return {"context": context, "prompt": prompt, "answer": answer, "kind": kind, "meta": meta}


# -------------------------------------------------------------------------------- kinds


def _single_fact(request: _Request) -> dict[str, Any]:
    rng = request.rng
    filler = _build_filler(request, reserve_words=12)
    depth = request.depth if request.depth is not None else rng.random()
    haystack, taken = filler.text.lower(), set()
    entity = _fresh(rng, _entity, haystack, taken)
    attribute, value = _attribute_and_value(rng, haystack, taken)
    fact = f"The {attribute} of the {entity} is {value}."
    context, offsets = _insert_sentences(filler.text, [(depth, fact)])
    return _sample("single_fact", context, f"What is the {attribute} of the {entity}?", value,
                   filler, request.pool, {"depth": depth, "fact_offsets": offsets, "facts": [fact]})


def _two_chunk(request: _Request) -> dict[str, Any]:
    """Two facts, the bridge (entity -> place) and the answer (place -> thing), far apart;
    which comes first is random, so the model cannot rely on reading order."""
    rng = request.rng
    filler = _build_filler(request, reserve_words=24)
    haystack, taken = filler.text.lower(), set()
    entity = _fresh(rng, _entity, haystack, taken)
    place = _fresh(rng, _place, haystack, taken)
    thing = _fresh(rng, _thing, haystack, taken)
    first, second, question = rng.choice(TWO_HOP_TEMPLATES)
    facts = [first.format(entity=entity, place=place), second.format(place=place, thing=thing)]
    early = rng.uniform(0.0, 0.4)
    depths = [early, rng.uniform(early + 0.5, 1.0)]
    if rng.random() < 0.5:
        depths.reverse()
    context, offsets = _insert_sentences(filler.text, list(zip(depths, facts)))
    if abs(offsets[1] - offsets[0]) < MIN_TWO_CHUNK_GAP * len(context):
        depths = [0.0, 1.0] if depths[0] < depths[1] else [1.0, 0.0]  # short text: use the ends
        context, offsets = _insert_sentences(filler.text, list(zip(depths, facts)))
    meta = {"depth": min(depths), "depths": depths, "fact_offsets": offsets, "facts": facts,
            "bridge": place}
    return _sample("two_chunk", context, question.format(entity=entity), thing, filler,
                   request.pool, meta)


def _topic(request: _Request) -> dict[str, Any]:
    """Ask which title the context covers; distractor titles come from documents that
    are not in the context and whose titles the context never mentions."""
    rng, docs = request.rng, request.pool.docs
    filler = _build_filler(request, reserve_words=0)
    biggest = max(filler.doc_words)
    candidates = [k for k, words in enumerate(filler.doc_words) if words >= biggest / 2]
    k = rng.choice(candidates)
    present = docs[filler.doc_indices[k]].title
    used, haystack = set(filler.doc_indices), filler.text.lower()
    context_titles = {docs[i].title for i in used}
    distractors: list[str] = []
    for index in _lazy_permutation(len(docs), rng):
        title = docs[index].title
        if index in used or title in context_titles or title in distractors or _mentions(haystack, title):
            continue
        distractors.append(title)
        if len(distractors) == _NUM_TOPIC_CHOICES - 1:
            break
    else:
        raise ValueError(
            f"topic questions need {_NUM_TOPIC_CHOICES - 1} documents outside the context whose "
            f"titles it does not mention; the context uses {len(used)} of {len(docs)} documents: "
            "pass more documents or a smaller context_tokens")
    choices = distractors + [present]
    rng.shuffle(choices)
    prompt = ("Which of these topics does the document discuss: "
              f"{'; '.join(choices[:-1])} or {choices[-1]}?")
    meta = {"depth": filler.doc_starts[k] / max(len(filler.text), 1), "fact_offsets": [],
            "facts": [], "choices": choices, "present_doc_id": docs[filler.doc_indices[k]].doc_id}
    return _sample("topic", filler.text, prompt, present, filler, request.pool, meta)


def _multi_fact(request: _Request) -> dict[str, Any]:
    """RULER multi-key: several needles with the same attribute, one of them asked."""
    rng, num_needles = request.rng, request.num_needles
    filler = _build_filler(request, reserve_words=12 * num_needles)
    haystack, taken = filler.text.lower(), set()
    attribute = rng.choice(NUMBER_ATTRIBUTES)
    entities = [_fresh(rng, _entity, haystack, taken) for _ in range(num_needles)]
    values = [_fresh(rng, _number, haystack, taken) for _ in range(num_needles)]
    depths = [rng.random() for _ in range(num_needles)]
    target = rng.randrange(num_needles)
    if request.depth is not None:
        depths[target] = request.depth
    facts = [f"The {attribute} of the {e} is {v}." for e, v in zip(entities, values)]
    context, offsets = _insert_sentences(filler.text, list(zip(depths, facts)))
    meta = {"depth": depths[target], "depths": depths, "fact_offsets": offsets, "facts": facts,
            "target_index": target, "keys": entities}
    return _sample("multi_fact", context, f"What is the {attribute} of the {entities[target]}?",
                   values[target], filler, request.pool, meta)


def _aggregation(request: _Request) -> dict[str, Any]:
    """Several names mentioned different numbers of times; the most frequent one wins
    by at least one mention, so the answer is unique."""
    rng = request.rng
    num_names, top = rng.randint(3, 5), rng.randint(4, 7)
    counts = [top] + [rng.randint(1, top - 1) for _ in range(num_names - 1)]
    filler = _build_filler(request, reserve_words=9 * sum(counts))
    haystack, taken = filler.text.lower(), set()
    names = [_fresh(rng, _entity, haystack, taken) for _ in range(num_names)]
    items = [(rng.random(), rng.choice(MENTION_TEMPLATES).format(entity=name))
             for name, count in zip(names, counts) for _ in range(count)]
    context, offsets = _insert_sentences(filler.text, items)
    context_lower = context.lower()
    assert all(_mentions(context_lower, n) == c for n, c in zip(names, counts))
    listed = names[:]
    rng.shuffle(listed)
    prompt = (f"These names appear in the document: {', '.join(listed)}. "
              "Which one is mentioned most often?")
    meta = {"depth": None, "depths": [d for d, _ in items], "fact_offsets": offsets,
            "facts": [s for _, s in items], "counts": dict(zip(names, counts))}
    return _sample("aggregation", context, prompt, names[0], filler, request.pool, meta)


def _mention(request: _Request) -> dict[str, Any]:
    """One name mentioned once among four listed; the other three appear nowhere. Unlike
    aggregation nothing is counted: one chunk's soft prompt holds the whole answer, so on
    short contexts it asks the soft prompts for their content as directly as QA can."""
    rng = request.rng
    filler = _build_filler(request, reserve_words=9)
    haystack, taken = filler.text.lower(), set()
    names = [_fresh(rng, _entity, haystack, taken) for _ in range(_NUM_TOPIC_CHOICES)]
    depth = request.depth if request.depth is not None else rng.random()
    sentence = rng.choice(MENTION_TEMPLATES).format(entity=names[0])
    context, offsets = _insert_sentences(filler.text, [(depth, sentence)])
    listed = names[:]
    rng.shuffle(listed)
    prompt = f"Which of these names does the document mention: {', '.join(listed[:-1])} or {listed[-1]}?"
    meta = {"depth": depth, "fact_offsets": offsets, "facts": [sentence], "choices": listed}
    return _sample("mention", context, prompt, names[0], filler, request.pool, meta)


# A real sentence fit to be asked about: it starts a line or follows a sentence end, a colon or
# a list bullet, may wrap over single line breaks, and holds 8-40 words.
_SENTENCE = re.compile(r"(?:^|(?<=[.!?:*]\s)|(?<=\n))[A-Z](?:[^\n]|\n(?!\n)){30,300}?[.!?](?=\s|$)")
_NOT_PROSE = re.compile(r"[<>@|{}=\\]")
_CLOZE_WORD = re.compile(r"(?<![\w./-])(?:\d[\d,.]*\d|\d{2,}|[A-Z][a-z]{2,}\w*|[a-z]{8,})(?![\w/-])")


def _filler_holding(request: _Request, find: Callable[[str], list], error: str) -> tuple[_Filler, list]:
    """A filler in which ``find`` finds something to ask, and what it found: a filler of tables
    or code may hold nothing askable, so up to 8 are drawn before ``error`` is raised."""
    for _ in range(8):
        filler = _build_filler(request, reserve_words=0)
        candidates = find(filler.text)
        if candidates:
            return filler, candidates
    raise ValueError(error)


def _cloze_candidates(text: str) -> list[tuple[int, str, re.Match]]:
    """(offset, sentence, word) for every word of a prose sentence that ``text`` states once."""
    haystack, candidates = text.lower(), []
    for m in _SENTENCE.finditer(text):
        sentence = m.group(0)
        words = sentence.split()
        # prose, not an address line, a table row or code: mostly words of letters
        if not 8 <= len(words) <= 40 or _NOT_PROSE.search(sentence) or \
                sum(w.strip(".,;:!?()\"'").isalpha() for w in words) < 2 * len(words) / 3:
            continue
        for w in _CLOZE_WORD.finditer(sentence, 1):
            if _mentions(haystack, w.group(0)) == 1:
                candidates.append((m.start(), sentence, w))
    return candidates


def _real_fact(request: _Request) -> dict[str, Any]:
    """A word the real text states exactly once (a number, a name or a long word, not the
    sentence's first), asked as the blank of its own sentence. Nothing is inserted: the fact
    is the text's, in its words; only the question's frame is fixed."""
    filler, candidates = _filler_holding(request, _cloze_candidates,
                                         "no sentence in the drawn text states a word only once; pass documents with prose")
    offset, sentence, word = request.rng.choice(candidates)
    cloze = " ".join(f"{sentence[:word.start()]}___{sentence[word.end():]}".split())
    prompt = f'Which word is missing from this sentence of the document: "{cloze}"?'
    meta = {"depth": offset / max(len(filler.text), 1), "fact_offsets": [offset], "facts": [sentence]}
    return _sample("real_fact", filler.text, prompt, word.group(0), filler, request.pool, meta)


# Fields of structured real text, each a (question, answer) a reader of that text would ask.
# A Debian changelog entry: "pkg (version) dist; urgency=u" ... " -- Name <email>  Day, DD Mon YYYY ..."
# (the leading space and the double space may have been normalised away).
_CHANGELOG_HEAD = re.compile(r"^([a-z0-9][a-z0-9+.-]+) \(([^()\s]+)\) [^;\n]+; urgency=", re.M)
_CHANGELOG_SIGN = re.compile(r"^ ?-- ([^<\n]+?) <[^>\n]+> +\w{3}, (\d{1,2} \w{3} \d{4})", re.M)
# Python package metadata (PEP 566): "Name: x" near "Version: y" and "Author: z".
_META_NAME = re.compile(r"^Name: (\S+)$", re.M)
_META_FIELD = re.compile(r"^(Version|Author): ([^\n<@]{2,60}?)\s*$", re.M)
# A Debian copyright file (DEP-5) stanza: "Files: paths", then within 12 lines "License: id".
_DEP5_STANZA = re.compile(r"^Files: ([^\n*]{1,60}?)\n(?:(?!Files:|License:)[^\n]*\n){0,12}?License: (\S+)", re.M)


def _field_questions(text: str) -> list[tuple[str, int, str, str, str]]:
    """(field, offset, fact, question, answer) for every field ``text`` states about a key it names
    once; the fact is the span of text from the key to the answer."""
    found = []
    heads = list(_CHANGELOG_HEAD.finditer(text))
    for i, head in enumerate(heads):
        package, version = head.group(1), head.group(2)
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        sign = _CHANGELOG_SIGN.search(text, head.end(), end)
        if sign is None or text.count(f"{package} ({version})") != 1:
            continue
        fact = text[head.start():sign.end()]
        found.append(("signer", head.start(), fact, f"Who signed the changelog entry of {package} {version}?", sign.group(1).strip()))
        found.append(("date", head.start(), fact, f"On which date was {package} {version} uploaded?", sign.group(2)))
    for name in _META_NAME.finditer(text):
        if text.count(f"Name: {name.group(1)}\n") != 1:
            continue
        window_end = text.find("\n\n", name.end())
        window_end = len(text) if window_end < 0 else window_end
        for field_match in _META_FIELD.finditer(text, name.end(), window_end):
            label, value = field_match.group(1), field_match.group(2).strip()
            question = (f"Which version of the {name.group(1)} package does the document describe?" if label == "Version"
                        else f"Who is the author of the {name.group(1)} package?")
            found.append((label.lower(), name.start(), text[name.start():field_match.end()], question, value))
    for stanza in _DEP5_STANZA.finditer(text):
        files = stanza.group(1).strip()
        if text.count(f"Files: {files}\n") != 1:
            continue
        found.append(("licence", stanza.start(), stanza.group(0), f"Under which licence are the files {files}?", stanza.group(2)))
    return found


def _date_spellings(date: str) -> list[str]:
    """The other ways a reader writes the changelog's "19 Jan 2021": 2021-01-19, 19 January 2021,
    January 19, 2021, Jan 19, 2021 (and without a leading zero); a right answer in another
    spelling is still right."""
    try:
        day = datetime.datetime.strptime(date, "%d %b %Y")
    except ValueError:
        return []
    spellings = {f"{day:%Y-%m-%d}", f"{day.day} {day:%B %Y}", f"{day:%B} {day.day}, {day.year}",
                 f"{day.day} {day:%b %Y}", f"{day:%b} {day.day}, {day.year}"}
    return sorted(spellings - {date})


def _real_field(request: _Request) -> dict[str, Any]:
    """A field that structured real text states once (who signed a changelog entry and when, a
    package's author or version, a copyright stanza's licence), asked in a reader's words.
    Nothing is inserted; the contexts must hold such text (e.g. /usr/share/doc's changelogs)."""
    rng = request.rng
    filler, candidates = _filler_holding(request, _field_questions,
                                         "no changelog entry, package metadata or copyright stanza in the drawn text; "
                                         "real_field needs such documents")
    # one field kind first, then one of its questions: changelogs would otherwise be most of them
    kind = rng.choice(sorted({c[0] for c in candidates}))
    _, offset, fact, prompt, answer = rng.choice([c for c in candidates if c[0] == kind])
    meta = {"depth": offset / max(len(filler.text), 1), "fact_offsets": [offset], "facts": [fact], "field": kind,
            "aliases": _date_spellings(answer) if kind == "date" else []}
    return _sample("real_field", filler.text, prompt, answer, filler, request.pool, meta)


def _unanswerable(request: _Request) -> dict[str, Any]:
    """single_fact's question about an entity the context never names. Half the time the
    context holds the same attribute of another entity, so "find a fact sentence" is not
    enough: the reader must check whose fact it is, and say so when it is nobody's asked."""
    rng = request.rng
    filler = _build_filler(request, reserve_words=12)
    haystack, taken = filler.text.lower(), set()
    asked = _fresh(rng, _entity, haystack, taken)
    attribute, value = _attribute_and_value(rng, haystack, taken)
    facts, offsets, context, depth = [], [], filler.text, None
    if rng.random() < 0.5:
        other = _fresh(rng, _entity, haystack, taken)
        depth = request.depth if request.depth is not None else rng.random()
        facts = [f"The {attribute} of the {other} is {value}."]
        context, offsets = _insert_sentences(filler.text, [(depth, facts[0])])
    assert not _mentions(context.lower(), asked)
    return _sample("unanswerable", context, f"What is the {attribute} of the {asked}?", UNANSWERABLE,
                   filler, request.pool, {"depth": depth, "fact_offsets": offsets, "facts": facts})


_BUILDERS: dict[str, Callable[[_Request], dict[str, Any]]] = {
    "single_fact": _single_fact, "two_chunk": _two_chunk, "topic": _topic,
    "multi_fact": _multi_fact, "aggregation": _aggregation, "mention": _mention,
    "real_fact": _real_fact, "real_field": _real_field, "unanswerable": _unanswerable,
}


def make_qa_samples(
    docs: Sequence[Document],
    num_samples: int,
    seed: int,
    context_tokens: Union[int, tuple[int, int]],
    kinds: Sequence[str] = DEFAULT_KINDS,
    tokens_per_word: float = 1.3,
    *,
    depth: Optional[float] = None,
    num_needles: int = 4,
) -> list[dict[str, Any]]:
    """``num_samples`` QA samples; kinds cycle in the given order so the mix is balanced.

    ``context_tokens`` is a length or a (min, max) range drawn per sample; it becomes
    ``context_tokens / tokens_per_word`` words. ``depth`` (0 = start, 1 = end) fixes where
    the asked needle of single_fact / multi_fact goes; by default it is uniform random.
    """
    unknown = [k for k in kinds if k not in _BUILDERS]
    if unknown or not kinds:
        raise ValueError(f"unknown or no kinds {unknown}; choose from {QA_KINDS + STRUCTURED_KINDS}")
    if num_samples < 0 or tokens_per_word <= 0 or num_needles < 1:
        raise ValueError("num_samples must be >= 0, tokens_per_word > 0, num_needles >= 1")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    low, high = (context_tokens, context_tokens) if isinstance(context_tokens, int) else context_tokens
    if not 0 < low <= high:
        raise ValueError(f"context_tokens must be positive (min <= max), got {context_tokens}")
    pool = _Pool(list(docs))
    samples = []
    for index in range(num_samples):
        rng = random.Random(f"{seed}:{index}")
        target_tokens = rng.randint(low, high)
        num_words = max(1, round(target_tokens / tokens_per_word))
        kind = kinds[index % len(kinds)]
        sample = _BUILDERS[kind](_Request(rng, pool, num_words, depth, num_needles))
        sample["meta"].update(seed=seed, index=index, context_tokens=target_tokens,
                              target_words=num_words)
        samples.append(sample)
    return samples


# ------------------------------------------------------------------------ reconstruction


def make_reconstruction_texts(docs: Sequence[Document], num_texts: int, seed: int,
                              words: int) -> list[str]:
    """Windows of about ``words`` words of real text, starting and (where possible)
    ending at sentence boundaries, for the reconstruction objective.

    Documents are drawn in proportion to their length, so every word of the corpus is
    about equally likely to be seen; documents shorter than a window are used only when
    no document is long enough.
    """
    return [text[a:b] for text, a, b in _windows(docs, num_texts, f"reconstruction:{seed}", words)]


def make_continuation_pairs(docs: Sequence[Document], num_pairs: int, seed: int, words: int) -> list[tuple[str, str]]:
    """(window, what follows it) pairs of about ``words`` words each, drawn as reconstruction
    windows are, for the continuation objective (ICAE's: from a span's soft prompts, predict the
    next span's text). Pairs whose document ends right after the window are left out."""
    pairs = []
    for text, a, b in _windows(docs, num_pairs, f"continuation:{seed}", 2 * words):
        first = _truncate_words(text, words, a)
        end = a + len(first)
        rest = _truncate_words(text, words, end).strip()
        if first.strip() and rest:
            pairs.append((first, rest))
    return pairs


def _windows(docs: Sequence[Document], num_texts: int, seed: str, words: int) -> list[tuple[str, int, int]]:
    """(document text, start, end) of ``num_texts`` windows of about ``words`` words."""
    if words < 1 or num_texts < 0:
        raise ValueError("words must be >= 1 and num_texts >= 0")
    sized = [(doc, doc.num_words) for doc in docs]
    eligible = [(d, n) for d, n in sized if n >= words] or [(d, n) for d, n in sized if n > 0]
    if not eligible:
        raise ValueError("no non-empty documents to draw reconstruction texts from")
    cum_weights = list(accumulate(n for _, n in eligible))
    rng = random.Random(seed)
    out = []
    for _ in range(num_texts):
        doc, doc_words = rng.choices(eligible, cum_weights=cum_weights)[0]
        text = doc.text
        chars_per_word = len(text) / doc_words
        start = rng.randint(0, max(0, len(text) - int(words * chars_per_word)))
        boundary = _BOUNDARY.search(text, start, min(len(text), start + 400)) if start else None
        if boundary:
            start = boundary.end()
        else:
            while 0 < start and not text[start - 1].isspace():
                start -= 1
        window = _truncate_words(text, words, start)
        first = text.find(window, start) if window else start
        out.append((text, first, first + len(window)))
    return out


# -------------------------------------------------------------------------------- JSONL


def write_jsonl(samples: Iterable[dict[str, Any]], path: PathLike) -> int:
    """Write one JSON object per line, atomically: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            for sample in samples:
                file.write(json.dumps(sample, ensure_ascii=False) + "\n")
                count += 1
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count


def read_jsonl(path: PathLike, on_error: OnError = "raise") -> list[dict[str, Any]]:
    """Samples from a JSONL file; each needs non-empty string context, prompt, answer.

    A bad line raises ``DataError`` naming file and line, or with ``on_error="skip"`` is
    reported through ``warnings.warn`` and left out.
    """
    check_on_error(on_error)
    samples = []
    for line_number, record in iter_jsonl_records(path, on_error):
        problem = sample_problem(record)
        if problem:
            report_data_error(f"{path}:{line_number}: {problem}", on_error)
            continue
        samples.append(record)
    return samples


def sample_problem(record: object) -> str:
    """Why `record` is not a usable reasoning sample, or "" if it is."""
    if not isinstance(record, dict):
        return "expected a JSON object with context, prompt and answer"
    for key in ("context", "prompt", "answer"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            return f"field {key!r} must be a non-empty string"
    return ""
