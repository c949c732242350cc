"""A GenerationResult's fields agree with each other in every reading mode.

Raw-only reading once returned ``chunks == []`` with ``raw_chunks == [10, 11, 16]``: indices
into a list the result did not hold. Now ``raw_chunks`` always index into ``chunks``, and
``chunk_scores`` (with citations asked for) has one score per entry of ``chunks``.
"""
import pytest

DOC = " ".join(f"Note {i}: the {animal} of shed {i} eats {food} at dawn." for i, (animal, food) in
               enumerate([("goat", "hay"), ("fox", "berries"), ("owl", "mice"), ("cat", "fish")] * 12))
Q = "What does the owl of shed 14 eat?"


def _modes(engine):
    """(name, result) for each way the engine reads a document."""
    from e2llm.prompts import PromptLayout

    total = sum(c.num_tokens for c in engine.chunk(DOC))
    window = engine.window_tokens
    out = []
    for name, settings, kwargs in [
        ("compressed", dict(soft_prompts_max_tokens=None), dict(raw_top_n=0)),
        ("hybrid", dict(soft_prompts_max_tokens=None), dict(raw_top_n=2)),
        ("raw only", dict(soft_prompts_max_tokens=total - 1), dict(raw_top_n=2)),
        ("truncated hybrid", dict(soft_prompts_max_tokens=None), dict(raw_top_n=2, overflow="truncate")),
    ]:
        saved = engine.config.soft_prompts_max_tokens
        engine.config.soft_prompts_max_tokens = settings["soft_prompts_max_tokens"]
        try:
            if name == "truncated hybrid":  # a window that holds the two raw passages and ten chunks, not all
                longest = sorted((c.text for c in engine.chunk(DOC)), key=len)[-2:]
                engine.config.decoder.max_window_tokens = PromptLayout.num_tokens(engine.layout.ids(Q, longest), 1) + 3 + 10
            out.append((name, engine.generate(Q, DOC, max_new_tokens=3, return_result=True, return_citations=True,
                                              **kwargs)))
        finally:
            engine.config.soft_prompts_max_tokens = saved
            engine.config.decoder.max_window_tokens = None
            assert engine.window_tokens == window
    return out


@pytest.fixture(scope="module")
def results(tiny_backbones):
    from e2llm import E2LLM
    from e2llm.testing import tiny_config

    engine = E2LLM.build(tiny_config(*tiny_backbones))
    return engine, dict(_modes(engine))


@pytest.mark.parametrize("mode", ["compressed", "hybrid", "raw only", "truncated hybrid"])
def test_every_index_points_into_the_result_and_every_score_has_its_chunk(results, mode):
    engine, by_mode = results
    r = by_mode[mode]
    context = engine.chunk(DOC)
    assert r.chunks and all(c in context for c in r.chunks)  # chunks of this document, in document order
    assert [context.index(c) for c in r.chunks] == sorted(context.index(c) for c in r.chunks)
    assert all(0 <= i < len(r.chunks) for i in r.raw_chunks) and len(set(r.raw_chunks)) == len(r.raw_chunks)
    assert len(r.chunk_scores) == len(r.chunks) and sum(r.chunk_scores) == pytest.approx(1, abs=1e-5)
    raw_cited = sorted((c for c in r.citations if c.kind == "raw"), key=lambda c: c.passage)
    assert [c.chunk for c in raw_cited] == [r.chunks[i] for i in r.raw_chunks]  # the passages the decoder read raw
    assert r.soft_tokens == (0 if r.raw_only else len(r.chunks) * engine.config.adapter.tokens_per_chunk)
    assert r.dropped_chunks == (len(context) - len(r.chunks) if mode == "truncated hybrid" else 0)


def test_the_modes_read_what_their_names_say(results):
    engine, by_mode = results
    n = len(engine.chunk(DOC))
    assert by_mode["compressed"].raw_chunks == [] and len(by_mode["compressed"].chunks) == n
    assert len(by_mode["hybrid"].raw_chunks) == 2 and len(by_mode["hybrid"].chunks) == n
    raw_only = by_mode["raw only"]
    assert raw_only.raw_only and raw_only.raw_chunks == [0, 1] and len(raw_only.chunks) == 2
    assert [c.text for c in raw_only.chunks] == [by_mode["hybrid"].chunks[i].text for i in by_mode["hybrid"].raw_chunks]
    assert not any(c.kind == "soft" for c in raw_only.citations)
    assert 0 < len(by_mode["truncated hybrid"].chunks) < n and len(by_mode["truncated hybrid"].raw_chunks) == 2
