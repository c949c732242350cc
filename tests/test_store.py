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


# ---------------------------------------------------------------------------- size limit (least recently used first)
def _row(i: int) -> torch.Tensor:
    return torch.full((256,), float(i))  # 1 KiB of float32


def test_the_store_stays_under_its_limit_dropping_the_least_recently_used(tmp_path):
    store = EncodingStore(tmp_path, max_bytes=3 * 1024)
    store.put_many("fp", [("a", _row(1)), ("b", _row(2))])
    store.put_many("fp", [("c", _row(3))])
    assert store.get_many("fp", ["a"])[0] is not None  # a read makes "a" the most recently used
    store.put_many("fp", [("d", _row(4))])  # 4 KiB > 3 KiB: one row must go, the least recently used ("b")
    got = dict(zip("abcd", store.get_many("fp", list("abcd"))))
    assert got["b"] is None and all(torch.equal(got[k], _row(i)) for i, k in ((1, "a"), (3, "c"), (4, "d")))
    assert store.size_bytes() <= 3 * 1024 and store.evicted == 1
    store.put_many("fp", [(f"big{i}", _row(10 + i)) for i in range(5)])  # more than the limit in one write
    assert store.size_bytes() <= 3 * 1024 and len(store) == 3


def test_every_process_shares_one_use_clock(tmp_path):
    """What another process read counts as used: the clock lives in the file, not in a process."""
    writer, reader = EncodingStore(tmp_path, max_bytes=2 * 1024), EncodingStore(tmp_path, max_bytes=2 * 1024)
    writer.put_many("fp", [("old", _row(1))])
    writer.put_many("fp", [("new", _row(2))])
    assert reader.get_many("fp", ["old"])[0] is not None  # another process reads the older row
    writer.put_many("fp", [("newest", _row(3))])
    assert [t is not None for t in writer.get_many("fp", ["old", "new", "newest"])] == [True, False, True]


def test_a_store_written_before_the_limit_is_read_and_bounded(tmp_path):
    from e2llm.store import _digest

    data = _row(7).numpy().tobytes()
    db = sqlite3.connect(tmp_path / EncodingStore.FILE)  # the schema before sizes and use ticks, one row in it
    db.execute("CREATE TABLE encodings (fingerprint TEXT NOT NULL, key TEXT NOT NULL, dtype TEXT NOT NULL, "
               "shape TEXT NOT NULL, data BLOB NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (fingerprint, key))")
    db.execute("INSERT INTO encodings VALUES (?, ?, ?, ?, ?, ?)",
               ("fp", "k", "torch.float32", "[256]", data, _digest("fp", "k", "torch.float32", "[256]", data)))
    db.commit()
    db.close()
    store = EncodingStore(tmp_path, max_bytes=2 * 1024)
    assert torch.equal(store.get_many("fp", ["k"])[0], _row(7)) and store.size_bytes() == 1024
    store.put_many("fp", [("x", _row(8))])
    store.put_many("fp", [("y", _row(9))])
    assert store.get_many("fp", ["k"])[0] is None and store.size_bytes() == 2 * 1024  # the old row went first


def test_an_engine_over_a_small_store_recomputes_what_was_evicted(make_tiny_engine, tmp_path):
    engine = make_tiny_engine(seed=1)
    want = engine.encode(DOC).vectors
    engine.store = EncodingStore(tmp_path)
    engine.cache.clear()
    engine.encode(DOC)
    one_document = engine.store.size_bytes()
    engine.store.max_bytes = one_document  # room for one document's encodings
    engine.encode(DOC.replace("fox", "badger"))
    assert engine.store.size_bytes() <= one_document and engine.store.evicted > 0
    engine.cache.clear()
    assert torch.allclose(engine.encode(DOC).vectors, want, atol=1e-5)


def test_a_size_limit_below_one_byte_is_refused(tmp_path):
    from e2llm.errors import InputError

    with pytest.raises(InputError, match="at least 1 byte"):
        EncodingStore(tmp_path, max_bytes=0)
