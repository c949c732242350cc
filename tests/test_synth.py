"""Offline corpus and synthetic long-document QA: the data the trainer and evaluator use."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm.train import corpus as corpus_module
from e2llm.train.corpus import (
    DataError,
    Document,
    clean_text,
    corpus_fingerprint,
    count_words,
    iter_text_files,
    load_corpus,
    split_documents,
    troff_to_text,
)
from e2llm.train.synth import (
    DEFAULT_KINDS,
    MIN_TWO_CHUNK_GAP,
    QA_KINDS,
    UNANSWERABLE,
    _date_spellings,
    _insert_sentences,
    make_qa_samples,
    make_reconstruction_texts,
    read_jsonl,
    write_jsonl,
)

CORE_DIR = Path(__file__).resolve().parents[1] / "core"


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    return load_corpus()


@pytest.fixture(scope="module")
def samples(corpus: list[Document]) -> list[dict]:
    return make_qa_samples(corpus, 40, seed=7, context_tokens=(1500, 4000), kinds=QA_KINDS)


def by_kind(samples: list[dict], kind: str) -> list[dict]:
    found = [s for s in samples if s["kind"] == kind]
    assert found, f"no {kind} samples"
    return found


# ------------------------------------------------------------------------------ corpus


def test_corpus_is_large_clean_and_unique(corpus: list[Document]) -> None:
    num_words = count_words(corpus)
    print(f"\nbuilt-in corpus: {len(corpus)} documents, {num_words} words")
    # pydoc topics (~65k words) + standard-library docstrings (~300k on CPython 3.11)
    assert len(corpus) > 300 and num_words > 300_000
    assert {d.source for d in corpus} == {"pydoc_topics", "stdlib_docstrings"}
    assert len({d.doc_id for d in corpus}) == len(corpus)
    assert len({d.title for d in corpus}) == len(corpus)  # titles are topic answers
    for doc in corpus:
        assert len(doc.text) >= 200 and doc.text == clean_text(doc.text)
    assert not any(d.doc_id.startswith(("module:antigravity", "module:this", "module:test.")) for d in corpus)


def test_corpus_is_cached_but_returns_fresh_lists(corpus: list[Document]) -> None:
    again = load_corpus()
    assert again == corpus and again is not corpus


def test_live_parts_of_the_corpus_are_identical_in_a_fresh_process() -> None:
    """Imported C modules and pydoc topics are live objects: a different hash seed or a
    test runner that patched ``sys`` hooks must not change their text. (Source
    docstrings are parsed from files in sorted order, so they cannot vary.)"""
    code = ("from e2llm.train import corpus as c; "
            "print(c.corpus_fingerprint(c._topic_documents() + c._c_module_documents()))")
    env = {**os.environ, "PYTHONPATH": str(CORE_DIR), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=600)  # a cold import of torch on a busy machine is slow
    here = corpus_fingerprint(corpus_module._topic_documents() + corpus_module._c_module_documents())
    assert out.stdout.strip() == here


def test_clean_text_keeps_paragraphs_and_collapses_spaces() -> None:
    raw = "  Hello \t  world  \r\nsecond   line\n\n\n\n  Next\tparagraph.  \n\n"
    assert clean_text(raw) == "Hello world\nsecond line\n\nNext paragraph."


def test_troff_to_text_strips_markup() -> None:
    page = '.TH LS 1\n.SH NAME\nls \\- list \\fBdirectory\\fR contents\n.PP\n.B \\-a\nshow all\n'
    text = clean_text(troff_to_text(page))
    assert text == "NAME\n\nls - list directory contents\n\n-a\nshow all"


# ----------------------------------------------------------------------------- split


def test_split_is_disjoint_deterministic_and_per_document(corpus: list[Document]) -> None:
    train, val = split_documents(corpus, seed=3, val_fraction=0.2)
    assert {d.doc_id for d in train}.isdisjoint(d.doc_id for d in val)
    assert len(train) + len(val) == len(corpus)
    assert 0.1 < len(val) / len(corpus) < 0.3
    assert split_documents(corpus, seed=3, val_fraction=0.2) == (train, val)
    assert split_documents(corpus, seed=4, val_fraction=0.2)[1] != val
    # A document's side does not depend on which other documents are present.
    half = corpus[::2]
    assert split_documents(half, seed=3, val_fraction=0.2)[1] == [d for d in val if d in half]
    with pytest.raises(ValueError):
        split_documents(corpus, seed=3, val_fraction=1.5)


# ------------------------------------------------------------------------------- QA


def test_samples_have_the_paper_format_and_answers_in_context(samples: list[dict]) -> None:
    assert {s["kind"] for s in samples} == set(QA_KINDS)
    for s in samples:
        assert all(isinstance(s[k], str) and s[k] for k in ("context", "prompt", "answer"))
        if s["kind"] not in ("topic", "unanswerable"):
            assert s["answer"] in s["context"]
        for offset, fact in zip(s["meta"]["fact_offsets"], s["meta"]["facts"], strict=True):
            assert s["context"].startswith(fact, offset)
        meta = s["meta"]
        assert abs(meta["num_words"] - meta["target_words"]) <= 0.05 * meta["target_words"] + 30


def test_default_kinds_cycle_in_order(corpus: list[Document]) -> None:
    kinds = [s["kind"] for s in make_qa_samples(corpus, 6, seed=1, context_tokens=600)]
    assert kinds == list(DEFAULT_KINDS) * 2


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.35, 0.5, 0.8, 1.0])
def test_single_fact_lands_at_the_requested_depth(corpus: list[Document], depth: float) -> None:
    for s in make_qa_samples(corpus, 3, seed=11, context_tokens=4000, kinds=["single_fact"], depth=depth):
        (offset,) = s["meta"]["fact_offsets"]
        assert s["meta"]["depth"] == depth
        assert abs(offset / len(s["context"]) - depth) < 0.05


def test_single_fact_entity_and_fact_are_unique(samples: list[dict]) -> None:
    for s in by_kind(samples, "single_fact"):
        (fact,) = s["meta"]["facts"]
        entity = re.search(r" of the (.+) is ", fact).group(1)
        assert s["context"].lower().count(entity) == 1
        assert fact.endswith(f" {s['answer']}.") and entity in s["prompt"]
        assert abs(s["meta"]["fact_offsets"][0] / len(s["context"]) - s["meta"]["depth"]) < 0.05


def test_two_chunk_facts_are_far_apart(samples: list[dict]) -> None:
    for s in by_kind(samples, "two_chunk"):
        first, second = s["meta"]["fact_offsets"]
        assert abs(second - first) >= MIN_TWO_CHUNK_GAP * len(s["context"])
        assert s["answer"] in s["meta"]["facts"][1] and s["answer"] not in s["meta"]["facts"][0]
        assert s["context"].count(s["meta"]["bridge"]) == 2


def test_topic_choices_hold_the_answer_once(samples: list[dict]) -> None:
    for s in by_kind(samples, "topic"):
        choices, titles = s["meta"]["choices"], s["meta"]["titles"]
        assert len(choices) == 4 and len(set(choices)) == 4
        assert choices.count(s["answer"]) == 1 and s["answer"] in titles
        assert not any(c in titles for c in choices if c != s["answer"])
        assert all(c in s["prompt"] for c in choices)


def test_multi_fact_asks_one_of_several_keys(samples: list[dict]) -> None:
    for s in by_kind(samples, "multi_fact"):
        meta = s["meta"]
        assert len(meta["facts"]) == 4 and len(set(meta["keys"])) == 4
        target_fact = meta["facts"][meta["target_index"]]
        assert target_fact.endswith(f" {s['answer']}.") and meta["keys"][meta["target_index"]] in s["prompt"]


def test_aggregation_answer_is_the_unique_most_frequent(samples: list[dict]) -> None:
    for s in by_kind(samples, "aggregation"):
        counts = s["meta"]["counts"]
        assert counts[s["answer"]] > max(c for n, c in counts.items() if n != s["answer"])
        for name, count in counts.items():
            assert s["context"].lower().count(name) == count and name in s["prompt"]


def test_mention_lists_four_names_of_which_only_the_answer_appears(corpus: list[Document], samples: list[dict]) -> None:
    # Also on one-chunk contexts, the lengths the kind is meant for.
    short = make_qa_samples(corpus, 6, seed=3, context_tokens=(48, 96), kinds=["mention"])
    for s in by_kind(samples, "mention") + short:
        choices, context = s["meta"]["choices"], s["context"].lower()
        assert len(set(choices)) == 4 and all(c in s["prompt"] for c in choices)
        assert [context.count(c) for c in choices] == [int(c == s["answer"]) for c in choices]
    assert all(len(s["context"].split()) <= 96 for s in short)


def test_real_fact_blanks_a_word_its_own_sentence_states_once(samples: list[dict]) -> None:
    for s in by_kind(samples, "real_fact"):
        (sentence,) = s["meta"]["facts"]
        (offset,) = s["meta"]["fact_offsets"]
        assert s["context"].startswith(sentence, offset)  # the text's own sentence, nothing inserted
        cloze = re.search(r'"(.*)"\?$', s["prompt"]).group(1)
        assert cloze.count("___") == 1 and " ".join(sentence.split()) == cloze.replace("___", s["answer"])
        word = re.compile(r"(?<![A-Za-z0-9])" + re.escape(s["answer"].lower()) + r"(?![A-Za-z0-9])")
        assert len(word.findall(s["context"].lower())) == 1  # one answer, in one place
        assert 8 <= len(sentence.split()) <= 40


STRUCTURED_DOCS = [  # as folder_documents reads /usr/share/doc: leading spaces and double spaces normalised
    Document("changelog", "changelog", "\n\n".join([
        "tallpkg (2.1-1) unstable; urgency=medium", "* New upstream release.\n* Drop an old patch.",
        "-- Ida Varga <ida@example.org> Tue, 20 Sep 2022 12:17:15 -0400",
        "tallpkg (2.0-3) unstable; urgency=low", "* Fix the build on arm64.",
        "-- Ada Moss <ada@example.org> Sat, 10 Apr 2021 15:55:15 +0200"]), "test"),
    Document("metadata", "metadata", "Metadata-Version: 2.4\nName: vellmar\nVersion: 4.8.1\nSummary: Choirs.\n"
             "Author: Orla Brenner\nLicense: MIT", "test"),
    Document("copyright", "copyright", "Files: src/harbour.c\nCopyright: 2001 Aldo Brenner\nLicense: GPL-2+\n\n"
             "Files: doc/maps.txt\nCopyright: 2010 Ida Varga\nLicense: CC0-1.0", "test"),
]
FIELD_ANSWERS = {"Who signed the changelog entry of tallpkg 2.1-1?": "Ida Varga",
                 "On which date was tallpkg 2.1-1 uploaded?": "20 Sep 2022",
                 "Who signed the changelog entry of tallpkg 2.0-3?": "Ada Moss",
                 "On which date was tallpkg 2.0-3 uploaded?": "10 Apr 2021",
                 "Which version of the vellmar package does the document describe?": "4.8.1",
                 "Who is the author of the vellmar package?": "Orla Brenner",
                 "Under which licence are the files src/harbour.c?": "GPL-2+",
                 "Under which licence are the files doc/maps.txt?": "CC0-1.0"}


def test_real_field_asks_what_structured_text_states(corpus: list[Document]) -> None:
    """Each question is one a reader of that text asks, its answer the field the text states for
    that key (not another entry's), and every kind of field comes up."""
    samples = make_qa_samples(STRUCTURED_DOCS + corpus[:6], 40, seed=3, context_tokens=(300, 600), kinds=["real_field"])
    for s in samples:
        assert FIELD_ANSWERS[s["prompt"]] == s["answer"]
        (fact,), (offset,) = s["meta"]["facts"], s["meta"]["fact_offsets"]
        assert s["context"].startswith(fact, offset) and s["answer"] in fact
    assert {s["meta"]["field"] for s in samples} == {"signer", "date", "version", "author", "licence"}
    dates = [s for s in samples if s["meta"]["field"] == "date"]
    assert all(s["meta"]["aliases"] for s in dates) and not any(s["meta"]["aliases"] for s in samples if s not in dates)
    from e2llm.eval.tasks import synthetic_items  # the evaluation accepts every spelling of a date

    items, _ = synthetic_items(["real_field"], [400], [0.5], 12, docs=STRUCTURED_DOCS + corpus[:6])
    assert {len(i.answers) for i in items if " date " in i.question} == {5}  # "20 Sep 2022" and 4 more
    assert {len(i.answers) for i in items if " date " not in i.question} == {1}
    assert _date_spellings("01 Jan 2026") == ["1 Jan 2026", "1 January 2026", "2026-01-01", "Jan 1, 2026", "January 1, 2026"]
    with pytest.raises(ValueError, match="real_field needs such documents"):
        make_qa_samples(corpus, 1, seed=3, context_tokens=300, kinds=["real_field"])


def test_unanswerable_asks_about_an_entity_the_context_never_names(samples: list[dict]) -> None:
    found = by_kind(samples, "unanswerable")
    for s in found:
        entity = re.search(r" of the (.+)\?$", s["prompt"]).group(1)
        assert s["answer"] == UNANSWERABLE and entity.lower() not in s["context"].lower()
        for offset, fact in zip(s["meta"]["fact_offsets"], s["meta"]["facts"], strict=True):  # another's fact
            assert s["context"].startswith(fact, offset) and entity not in fact
    more = make_qa_samples(load_corpus(), 12, seed=5, context_tokens=600, kinds=["unanswerable"])
    assert 0 < sum(bool(s["meta"]["facts"]) for s in found + more) < len(found + more)  # with and without a distractor


def test_samples_are_deterministic_and_seed_dependent(corpus: list[Document], samples: list[dict]) -> None:
    again = make_qa_samples(corpus, 40, seed=7, context_tokens=(1500, 4000), kinds=QA_KINDS)
    assert again == samples
    other = make_qa_samples(corpus, 10, seed=8, context_tokens=(1500, 4000), kinds=QA_KINDS)
    assert all(a["context"] != b["context"] for a, b in zip(other, samples))
    # Sample i does not depend on how many samples are asked for.
    assert make_qa_samples(corpus, 5, seed=7, context_tokens=(1500, 4000), kinds=QA_KINDS) == samples[:5]


def test_contexts_use_only_the_given_documents(corpus: list[Document]) -> None:
    train, val = split_documents(corpus, seed=0, val_fraction=0.3)
    val_ids = {d.doc_id for d in val}
    for s in make_qa_samples(val, 10, seed=2, context_tokens=3000, kinds=QA_KINDS):
        assert set(s["meta"]["doc_ids"]) <= val_ids


def test_bad_arguments_are_rejected(corpus: list[Document]) -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_qa_samples(corpus, 1, seed=0, context_tokens=500, kinds=["riddle"])
    with pytest.raises(ValueError):
        make_qa_samples(corpus, 1, seed=0, context_tokens=(900, 500))
    with pytest.raises(ValueError, match="too few words"):
        make_qa_samples(corpus[:3], 1, seed=0, context_tokens=10**6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_insert_sentences_offsets_are_exact(depths: list[float]) -> None:
    text = "\n\n".join(f"Paragraph {i} starts. It has two sentences." for i in range(30))
    facts = [f"Fact number {i} is here." for i in range(len(depths))]
    new_text, offsets = _insert_sentences(text, list(zip(depths, facts)))
    assert len(new_text) > len(text)
    for offset, fact, depth in zip(offsets, facts, depths):
        assert new_text.startswith(fact, offset)
        assert abs(offset / len(new_text) - depth) < 0.1
    assert re.sub(r"Fact number \d+ is here\.\s*", "", new_text).split() == text.split()


# ----------------------------------------------------------------------- reconstruction


def test_reconstruction_texts_are_real_windows(corpus: list[Document]) -> None:
    texts = make_reconstruction_texts(corpus, 20, seed=5, words=120)
    assert len(texts) == 20 and texts == make_reconstruction_texts(corpus, 20, seed=5, words=120)
    assert texts != make_reconstruction_texts(corpus, 20, seed=6, words=120)
    joined = "\n\x00".join(d.text for d in corpus)
    for text in texts:
        assert 60 <= len(text.split()) <= 120 and text in joined


# ------------------------------------------------------------------------------ JSONL


def test_jsonl_round_trip_is_atomic(tmp_path: Path, samples: list[dict]) -> None:
    path = tmp_path / "out" / "qa.jsonl"
    assert write_jsonl(samples[:5], path) == 5
    assert read_jsonl(path) == samples[:5]
    assert os.listdir(path.parent) == ["qa.jsonl"]  # no temporary file left behind


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_malformed_jsonl_line_is_named_or_skipped(tmp_path: Path) -> None:
    good = json.dumps({"context": "c", "prompt": "p", "answer": "a"})
    path = write_lines(tmp_path / "bad.jsonl", [good, "{not json", good, json.dumps({"context": "c", "prompt": "p"})])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        read_jsonl(path)
    with pytest.warns(UserWarning) as caught:
        kept = read_jsonl(path, on_error="skip")
    assert len(kept) == 2
    messages = [str(w.message) for w in caught]
    assert any("bad.jsonl:2" in m for m in messages) and any("bad.jsonl:4" in m and "answer" in m for m in messages)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("Plain text that is fine.\n", encoding="utf-8")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt:1: not valid UTF-8"):
        list(iter_text_files(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(iter_text_files(tmp_path, on_error="skip"))
    assert [d.title for d in docs] == ["good"] and "latin.txt" in str(caught[0].message)
    (tmp_path / "latin.txt").unlink()
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8"):
        list(iter_text_files(tmp_path))
    qa = json.dumps({"context": "c", "prompt": "p", "answer": "a"}).encode()
    (tmp_path / "qa.jsonl").write_bytes(qa + b"\n" + qa.replace(b'"a"', b'"\xff"') + b"\n")
    with pytest.raises(DataError, match=r"qa\.jsonl:2: not valid UTF-8"):
        read_jsonl(tmp_path / "qa.jsonl")


def test_iter_text_files_reads_folders_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("# Notes\n\nSome   text.", encoding="utf-8")
    write_lines(tmp_path / "set.jsonl", [json.dumps({"text": "First doc.", "title": "One"}), "",
                                         json.dumps({"text": "Second doc."})])
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = list(iter_text_files([tmp_path]))
    assert [(d.doc_id, d.title, d.text) for d in docs] == [
        ("file:set.jsonl:1", "One", "First doc."),
        ("file:set.jsonl:3", "set:3", "Second doc."),
        ("file:sub/notes.md", "notes", "# Notes\n\nSome text."),
    ]
    with pytest.raises(DataError, match="expected a JSON object"):
        write_lines(tmp_path / "set.jsonl", ['{"title": "no text"}'])
        list(iter_text_files(tmp_path / "set.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        list(iter_text_files(tmp_path / "missing"))
