"""The on-disk encoding store: shared across engines (processes), never trusted when broken."""
import sqlite3

import pytest
import torch

from e2llm.store import EncodingStore

DOC = ("The quick brown fox lives in a quiet forest near the river. It eats berries in the summer. "
       "In winter the fox sleeps in a den under an old oak tree, and the river freezes over.")


def _no_encoder(engine):
    def fail(*a, **k):
        raise AssertionError("the encoder ran although the store holds every chunk")
    engine._encode_pass = fail
    engine._encoder_batches = fail


def test_a_second_engine_reads_the_encodings_from_disk(make_tiny_engine, tmp_path):
    first = make_tiny_engine(seed=1)
    first.use_store(tmp_path)
    want = first.encode(DOC).vectors
    per_chunk = 2 if first.ranking_pass == "shared" else 1  # soft prompt (+ ranking vector from the same pass)
    assert len(first.store) == per_chunk * len(first.chunk(DOC)) + 1  # + the document's chunk spans
    second = make_tiny_engine(seed=1)  # same weights, empty memory cache: a fresh process
    second.use_store(tmp_path)
    _no_encoder(second)
    calls = []
    real = second.encoder_tokenizer.__call__
    second.encoder_tokenizer.__class__ = type("Counting", (type(second.encoder_tokenizer),),
                                              {"__call__": lambda self, *a, **k: calls.append(1) or real(*a, **k)})
    assert torch.equal(second.encode(DOC).vectors, want)
    assert calls == []  # the chunk spans came from the store too: no tokenizer pass
    assert second.store.hits == len(first.chunk(DOC)) + 1


def test_chunk_spans_are_remembered_and_checked_against_their_document(make_tiny_engine, tmp_path):
    engine = make_tiny_engine(seed=1)
    engine.use_store(tmp_path)
    want = engine.chunk(DOC)
    assert engine.chunk(DOC) == want and engine.cache.hits >= 1
    key = next(k for k in engine.cache._items if k.startswith("spans-"))
    engine.cache.put(key, torch.tensor([[0, len(DOC) + 5, 3]]))  # runs past the text: never trusted
    assert engine.chunk(DOC) == want
    engine.config.chunking.tokens_per_chunk = 8  # other settings: other spans, not the remembered ones
    other = engine.chunk(DOC)
    assert len(other) > len(want) and all(c.num_tokens <= 8 for c in other)


def test_encodings_of_other_weights_are_not_used(make_tiny_engine, tmp_path):
    first = make_tiny_engine(seed=1)
    first.use_store(tmp_path)
    first.encode(DOC)
    other = make_tiny_engine(seed=2)
    other.use_store(tmp_path)
    assert other._encoding_fingerprint() != first._encoding_fingerprint()
    fresh = other.encode(DOC).vectors
    assert other.store.hits == 0
    other.use_store(None)
    other.cache.clear()
    assert torch.allclose(other.encode(DOC).vectors, fresh)
    # weights changed in place (a training step): another fingerprint
    before = first._encoding_fingerprint()
    with torch.no_grad():
        next(first.adapter.parameters()).add_(0.1)
    assert first._encoding_fingerprint() != before


def test_a_tampered_row_is_recomputed(make_tiny_engine, tmp_path):
    engine = make_tiny_engine(seed=1)
    engine.use_store(tmp_path)
    want = engine.encode(DOC).vectors
    db = sqlite3.connect(tmp_path / EncodingStore.FILE)
    key, data = db.execute("SELECT key, data FROM encodings LIMIT 1").fetchone()
    flipped = bytearray(data)
    flipped[0] ^= 0xFF
    db.execute("UPDATE encodings SET data = ? WHERE key = ?", (bytes(flipped), key))
    db.execute("UPDATE encodings SET shape = '[3]' WHERE key != ?", (key,))
    db.commit()
    db.close()
    again = make_tiny_engine(seed=1)
    again.use_store(tmp_path)
    got = again.encode(DOC).vectors
    assert again.store.rejected == len(engine.chunk(DOC)) + 1 and again.store.hits == 0  # every chunk + the spans
    assert torch.allclose(got, want, atol=1e-5)


def test_a_file_that_is_no_database_is_moved_aside(make_tiny_engine, tmp_path):
    (tmp_path / EncodingStore.FILE).write_bytes(b"not a database at all" * 100)
    engine = make_tiny_engine(seed=1)
    with pytest.warns(UserWarning, match="unreadable"):
        engine.use_store(tmp_path)
    engine.encode(DOC)
    assert len(engine.store) >= len(engine.chunk(DOC))
    assert list(tmp_path.glob("encodings.sqlite.corrupt-*"))


def test_a_file_given_as_store_folder_is_a_clear_error(tmp_path):
    from e2llm.errors import InputError

    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(InputError, match="is a file"):
        EncodingStore(f)


def test_shared_ranking_pass_encodes_each_chunk_once(make_tiny_engine):
    engine = make_tiny_engine(seed=1)
    engine.ranking_pass = "shared"
    calls = []
    real = engine._encoder_batches

    def counting(texts, grad=True):
        calls.append(len(texts))
        return real(texts, grad)
    engine._encoder_batches = counting
    engine.generate("Where does the fox sleep?", DOC, raw_top_n=1, max_new_tokens=2)
    n = len(engine.chunk(DOC))
    assert sum(calls) == n + 1  # every chunk once, and the question
    order = engine.rank_chunks("Where does the fox sleep?", engine.chunk(DOC))
    assert sorted(order) == list(range(n))
