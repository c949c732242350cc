"""Citations: answer rows only, equal to the full-attention computation they replace."""
import pytest
import torch

from e2llm.citations import answer_attention
from e2llm.testing import eager_attentions

DOC = ("The red fox lives in the northern forest. It hunts at night.\n" * 12) + "The blue whale sings in the deep sea. " * 12
Q = "Where does the fox live?"


def _full_attention_rows(base, embeds, rows):
    """The old way (reference): every layer's full eager attention matrix, then the rows."""
    return eager_attentions(base, embeds)[:, :, rows].sum((0, 1, 2))  # (T,)  # (T,)


def test_answer_rows_equal_full_attention_and_kernel_is_restored(tiny_engine):
    base = tiny_engine._decoder_base
    torch.manual_seed(0)
    embeds = torch.randn(1, 40, tiny_engine.config.decoder.hidden_size)
    rows = slice(30, 39)
    before = base.config._attn_implementation
    got = answer_attention(base, embeds, rows)
    torch.testing.assert_close(got, _full_attention_rows(base, embeds, rows), rtol=1e-4, atol=1e-5)
    assert base.config._attn_implementation == before
    assert torch.isclose(got.sum(), torch.tensor(float(2 * 4 * 9)), rtol=1e-4)  # layers x heads x rows, each row sums to 1


def test_citations_cover_soft_chunks_and_raw_passages(make_tiny_engine):
    engine = make_tiny_engine(raw_top_n=2)
    owls = "A caller passage about owls."
    r = engine.generate(Q, DOC, raw_texts=[owls], return_citations=True, return_result=True)
    assert len(r.chunk_scores) == len(r.chunks) and abs(sum(r.chunk_scores) - 1) < 1e-5
    soft = [c for c in r.citations if c.kind == "soft"]
    raw = sorted((c for c in r.citations if c.kind == "raw"), key=lambda c: c.passage)
    assert len(soft) == len(r.chunks) and len(raw) == 1 + len(r.raw_chunks) == 3
    assert abs(sum(c.score for c in r.citations) - 1) < 1e-5 and all(c.score > 0 for c in r.citations)
    assert raw[0].chunk is None and [c.chunk for c in raw[1:]] == [r.chunks[i] for i in r.raw_chunks]
    assert [c.score for c in r.citations] == sorted((c.score for c in r.citations), reverse=True)
    # soft shares, renormalised among themselves, are the chunk scores
    soft_total = sum(c.score for c in soft)
    by_chunk = {id(c.chunk): c.score / soft_total for c in soft}
    assert all(abs(by_chunk[id(ch)] - s) < 1e-5 for ch, s in zip(r.chunks, r.chunk_scores))


def test_raw_token_spans_hold_the_passages(make_tiny_engine):
    engine = make_tiny_engine(raw_top_n=1)
    passages = ["First quoted passage.", "Second one, with 42 numbers."]
    prepared = engine._prepare(Q, DOC, raw_texts=passages, max_new_tokens=4)
    suffix = list(prepared.pieces[-1].ids)
    spans = engine._raw_token_spans(prepared)
    assert len(spans) == 3
    for (a, b), text in zip(spans, prepared.raw_passages):
        assert text.strip() in engine.decoder_tokenizer.decode(suffix[a:b])


def test_citations_of_a_stream_match_generate(tiny_engine):
    stream = tiny_engine.stream(Q, DOC, return_citations=True)
    "".join(stream)
    r = tiny_engine.generate(Q, DOC, return_citations=True, return_result=True)
    assert stream.result.text == r.text
    assert [c.score for c in stream.result.citations] == pytest.approx([c.score for c in r.citations], abs=1e-6)
