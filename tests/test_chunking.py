"""Pure tier: the chunker, property-tested with a whitespace tokenizer."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm.chunking import chunk_spans, chunk_text


def ws_spans(text):
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def tokens_in(text, start, end):
    return sum(1 for s, _ in ws_spans(text) if start <= s < end)


texts = st.text(alphabet=st.sampled_from(list("ab cd.!?\n\t é,")), min_size=0, max_size=400)


@settings(max_examples=300, deadline=None)
@given(text=texts, budget=st.integers(1, 20))
def test_no_text_lost_or_duplicated(text, budget):
    pieces = chunk_spans(text, ws_spans(text), budget)
    if not ws_spans(text):
        assert pieces == []
        return
    assert "".join(text[s:e] for s, e, _ in pieces) == text  # exact partition of the source
    for s, e, n in pieces:
        assert s < e
        assert n == tokens_in(text, s, e) <= budget


@settings(max_examples=300, deadline=None)
@given(text=texts, budget=st.integers(2, 20), data=st.data())
def test_overlap_is_bounded_and_covers(text, budget, data):
    overlap = data.draw(st.integers(0, budget - 1))
    spans = ws_spans(text)
    pieces = chunk_spans(text, spans, budget, overlap)
    if not spans:
        return
    assert pieces[0][0] == 0 and pieces[-1][1] == len(text)
    for (s0, e0, _), (s1, e1, _) in zip(pieces, pieces[1:]):
        assert s0 < s1 <= e0  # contiguous, always moving forward, no gap
        assert tokens_in(text, s1, e0) <= overlap  # re-read only the overlap
    for s, e, n in pieces:
        assert n <= budget


def test_backs_off_to_sentence_end():
    text = "One two three. Four five six seven eight nine ten eleven."
    pieces = chunk_spans(text, ws_spans(text), 6)
    assert text[pieces[0][0]:pieces[0][1]] == "One two three. "


def test_min_fill_prevents_tiny_chunks():
    text = "A. " + " ".join(["word"] * 30)
    pieces = chunk_spans(text, ws_spans(text), 10, min_fill=0.5)
    assert all(n >= 5 for _, _, n in pieces[:-1])


def test_line_break_is_a_boundary():
    text = "alpha beta gamma\ndelta epsilon zeta eta theta iota kappa"
    pieces = chunk_spans(text, ws_spans(text), 5)
    assert text[pieces[0][0]:pieces[0][1]] == "alpha beta gamma\n"


def test_bad_arguments():
    with pytest.raises(ValueError):
        chunk_spans("a b", [(0, 1), (2, 3)], 0)
    with pytest.raises(ValueError):
        chunk_spans("a b", [(0, 1), (2, 3)], 2, overlap_tokens=2)


def test_real_tokenizer_offsets(tiny_engine, long_text):
    text = long_text[:20000]
    chunks = chunk_text(text, tiny_engine.encoder_tokenizer, 32)
    assert "".join(c.text for c in chunks) == text
    assert all(c.text == text[c.start:c.end] for c in chunks)
    assert max(c.num_tokens for c in chunks) <= 32
    # the encoder re-tokenizes each chunk: the budget holds there too
    lengths = [len(tiny_engine.encoder_tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(lengths) <= 32
