"""Real-model tier: the default MiniLM-L6 encoder and SmolLM2-135M-Instruct decoder."""
import contextlib

import pytest
import torch

from e2llm import E2LLM

pytestmark = pytest.mark.slow


def test_encode_a_real_document(default_engine, long_text):
    doc = long_text[:60000]
    sp = default_engine.encode(doc)
    assert sp.vectors.shape == (sp.num_chunks, default_engine.config.adapter.tokens_per_chunk, 576)
    assert "".join(c.text for c in sp.chunks) == doc
    assert sp.num_context_tokens > 10000 and sp.compression_ratio > 30
    assert max(c.num_tokens for c in sp.chunks) <= default_engine.config.chunking.tokens_per_chunk


def test_generate_and_round_trip(default_engine, long_text, tmp_path):
    doc = long_text[:8000]
    q = "What does the document describe?"
    default_engine.cache.clear()  # chunks cached from other batches differ in the last float bits
    first = default_engine.generate(q, doc, max_new_tokens=12, return_result=True)
    assert first.new_tokens >= 0 and first.soft_tokens > 10
    default_engine.save_pretrained(tmp_path / "ck")
    loaded = E2LLM.from_pretrained(tmp_path / "ck")
    torch.testing.assert_close(loaded.encode(doc).vectors, default_engine.encode(doc).vectors, rtol=0, atol=0)
    assert loaded.generate(q, doc, max_new_tokens=12) == first.text


def test_plain_decoder_still_answers_without_context(default_engine):
    """The untouched decoder path (no soft prompts) gives a sensible answer: the splice and
    chat template feed the model exactly what it was trained on."""
    out = default_engine.generate("What is the capital of France?", None, max_new_tokens=12)
    assert "Paris" in out


def test_ranking_in_bf16_keeps_the_fp32_order(default_engine, long_text, monkeypatch):
    """The hybrid ranking pass may run in bf16 autocast (faster on CPUs and GPUs with bf16
    matmuls); on real text its top chunks must be the fp32 ones."""
    import e2llm.model as model_module

    if not model_module._cpu_has_bf16():
        pytest.skip("this CPU has no bf16 matmuls: the ranking pass runs in fp32 anyway")
    chunks = default_engine.chunk(long_text[:40_000])
    question = "What happens when an exception is raised inside a finally clause?"
    default_engine.cache.clear()
    fast = default_engine.rank_chunks(question, chunks)
    monkeypatch.setattr(model_module, "_cpu_has_bf16", lambda: False)
    default_engine.cache.clear()
    exact = default_engine.rank_chunks(question, chunks)
    default_engine.cache.clear()
    assert fast[:3] == exact[:3]
    assert isinstance(model_module._bf16_autocast(default_engine.device, torch.float32), contextlib.nullcontext)


def test_encoder_autocast_only_without_gradients(default_engine, long_text):
    """Inference may run the encoder in bf16 autocast; the soft prompts stay within 1% of fp32.
    With gradients (training) the encoder runs in exact fp32 whatever the switch says."""
    import e2llm.model as model_module

    texts = [c.text for c in default_engine.chunk(long_text[:6_000])][:16]
    default_engine.cache.clear()
    try:
        default_engine.autocast_encoder = False
        with torch.no_grad():
            exact = default_engine.soft_prompts(texts)
        default_engine.autocast_encoder = True
        with torch.no_grad():
            fast = default_engine.soft_prompts(texts)
        trained = default_engine.soft_prompts(texts).detach()  # gradients on: the training path
    finally:
        default_engine.autocast_encoder = True
    assert torch.allclose(trained, exact, rtol=1e-5, atol=1e-6)
    if model_module._cpu_has_bf16():
        assert not torch.equal(fast, exact)  # autocast did run
    assert float((fast - exact).norm() / exact.norm()) < 0.01
