"""Shared by the plugin tests: one tiny engine per test session (random weights, no downloads);
each test module wraps these in its own fixtures.
"""
from __future__ import annotations

import contextlib

_BUILT: dict = {}

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 6,
    "A long document is split into chunks of text. Each chunk is encoded into one soft prompt vector. " * 3,
    "Numbers 0123456789 appear here; the decoder reads the soft prompts and the question. " * 3,
]
QUESTIONS = ["What does the fox do?", "What is a chunk?", "Which numbers appear?"]


def build_engine(root):
    if "engine" not in _BUILT:
        from e2llm import E2LLM as E2LLMEngine
        from e2llm.testing import build_tiny_backbones, tiny_config

        enc_dir, dec_dir = build_tiny_backbones(root)  # wide decoder init: answers depend on the input
        _BUILT["engine"] = E2LLMEngine.build(tiny_config(enc_dir, dec_dir))
    return _BUILT["engine"]


@contextlib.contextmanager
def window(engine, tokens: int):
    """The engine with a smaller decoder window, restored afterwards."""
    cfg = engine.config.decoder
    before = cfg.max_window_tokens
    cfg.max_window_tokens = tokens
    try:
        yield engine
    finally:
        cfg.max_window_tokens = before


class BatchSpy:
    """Wraps engine.generate_batch / engine.stream to record how they were called."""

    def __init__(self, engine, monkeypatch):
        self.calls, self.streams = [], []
        batch, stream = engine.generate_batch, engine.stream

        def spy_batch(questions, contexts, **kw):
            self.calls.append({"questions": list(questions), "contexts": list(contexts), **kw})
            return batch(questions, contexts, **kw)

        def spy_stream(question, context=None, **kw):
            self.streams.append({"question": question, "context": context, **kw})
            return stream(question, context, **kw)

        monkeypatch.setattr(engine, "generate_batch", spy_batch)
        monkeypatch.setattr(engine, "stream", spy_stream)
