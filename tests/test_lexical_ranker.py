"""The BM25 first pass of chunk ranking (issue 35): config.ranker_candidates."""
import pytest

from e2llm.model import _bm25_index, lexical_order

TEXTS = ["The cat sat on the mat.", "Dogs chase cats in the park.", "Quantum physics is hard to teach.",
         "The museum in Tallberg was founded in 1911 by Ida Varga.", "Rain fell on the quiet harbour all night."]


def test_lexical_order_puts_the_matching_text_first_and_keeps_every_index():
    order = lexical_order("When was the museum in Tallberg founded?", TEXTS, 2)
    assert order[0] == 3 and sorted(order) == list(range(len(TEXTS)))
    assert lexical_order("anything", TEXTS, 5) is None and lexical_order("anything", TEXTS, None) is None
    assert lexical_order("the of and", TEXTS, 2) == list(range(len(TEXTS)))  # only stopwords: text order


def test_a_second_question_about_the_same_chunks_reuses_their_index():
    _bm25_index.cache_clear()
    first = lexical_order("When was the museum in Tallberg founded?", TEXTS, 2)
    again = lexical_order("Where did the cat sit?", list(TEXTS), 2)  # the same texts, another list
    assert _bm25_index.cache_info().misses == 1 and _bm25_index.cache_info().hits == 1
    assert first[0] == 3 and again[0] == 0  # each question scored against the kept index
    lexical_order("Where did the cat sit?", TEXTS[:4], 2)  # other chunks: their own index
    assert _bm25_index.cache_info().misses == 2


def test_the_encoder_ranks_only_the_candidates(make_tiny_engine):
    engine = make_tiny_engine()
    doc = " ".join(TEXTS * 6)
    chunks = engine.chunk(doc)
    assert len(chunks) > 3
    seen = []
    real = engine.ranking_vectors
    engine.ranking_vectors = lambda texts: seen.append(len(texts)) or real(texts)
    full = engine.rank_chunks("When was the museum founded?", chunks)
    engine.config.ranker_candidates = 3
    two_pass = engine.rank_chunks("When was the museum founded?", chunks)
    assert sorted(two_pass) == sorted(full) == list(range(len(chunks)))  # a permutation of every chunk
    assert seen == [1, len(chunks), 1, 3]  # question, then every chunk; question, then 3 candidates
    lexical = lexical_order("When was the museum founded?", [c.text for c in chunks], 3)
    assert set(two_pass[:3]) == set(lexical[:3]) and two_pass[3:] == lexical[3:]


def test_ranker_bm25_ranks_every_chunk_without_an_encoder_pass(make_tiny_engine):
    engine = make_tiny_engine()
    chunks = engine.chunk(" ".join(TEXTS * 6))
    engine.config.ranker = "bm25"
    engine.ranking_vectors = lambda texts: pytest.fail("the encoder ranked chunks")
    order = engine.rank_chunks("When was the museum in Tallberg founded?", chunks)
    assert order == lexical_order("When was the museum in Tallberg founded?", [c.text for c in chunks], 0)
    assert sorted(order) == list(range(len(chunks))) and "Tallberg" in chunks[order[0]].text


def test_missing_bm25s_is_one_line_with_the_install_hint(monkeypatch):
    import builtins

    from e2llm.errors import ConfigError

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "bm25s" else real_import(name, *a, **k))
    with pytest.raises(ConfigError, match=r"pip install bm25s"):
        lexical_order("q", TEXTS, 2)


def test_answer_chunks_finds_the_chunks_that_hold_an_answer(make_tiny_engine):
    from types import SimpleNamespace

    from e2llm.bench.encode_bench import answer_chunks

    engine = make_tiny_engine()
    item = SimpleNamespace(context=" ".join(TEXTS * 6), answers=["Ida Varga"])
    chunks, relevant = answer_chunks(engine, item)
    assert relevant and all("Ida Varga" in chunks[i].text for i in relevant)
    assert all("Ida Varga" not in c.text for i, c in enumerate(chunks) if i not in relevant)
    assert answer_chunks(engine, SimpleNamespace(context=item.context, answers=["Zanzibar"]))[1] == set()
