"""Real-model tier: the default MiniLM-L6 encoder and SmolLM2-135M-Instruct decoder."""
from pathlib import Path

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
    doc = long_text[:14000]  # about 3K chunk tokens: the default reads soft prompts from 2,049 to 8,192
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


def test_ranking_in_bf16_keeps_the_fp32_order(default_engine, long_text):
    """The hybrid ranking pass runs a bf16 copy of the encoder where bf16 pays (CPUs and GPUs
    with bf16 matmuls); on real text its top chunks must be the fp32 ones."""
    import e2llm.model as model_module

    if not model_module._bf16_pays(default_engine.device, torch.float32):
        pytest.skip("this CPU has no bf16 matmuls: the ranking pass runs in fp32 anyway")
    chunks = default_engine.chunk(long_text[:40_000])
    question = "What happens when an exception is raised inside a finally clause?"
    default_engine.cache.clear()
    try:
        fast = default_engine.rank_chunks(question, chunks)
        with torch.no_grad():
            assert default_engine._bf16_encoder() is not None  # the copy did run
        default_engine.autocast_encoder = False
        default_engine.cache.clear()
        exact = default_engine.rank_chunks(question, chunks)
    finally:
        default_engine.autocast_encoder = True
        default_engine.cache.clear()
    assert fast[:3] == exact[:3]


def test_encoder_autocast_only_without_gradients(default_engine, long_text):
    """Inference may run the encoder in bf16 (a merged copy); the soft prompts stay within 1% of fp32.
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
    if model_module._bf16_pays(default_engine.device, torch.float32):
        assert not torch.equal(fast, exact)  # the bf16 copy did run
    assert float((fast - exact).norm() / exact.norm()) < 0.01


# ---------------------------------------------------------------- pinned behaviour on unseen text
# A dozen questions on real text of another kind than the training corpus (Python's docs, man
# pages): 14 licence texts, shipped with the tests in tests/data/licences (verbatim copies of
# Debian's /usr/share/common-licenses, base-files 12.4+deb12u11, which these texts permit; the
# .gitattributes there keeps their bytes on every OS, so the test runs, and reads the same
# text, anywhere), mixed into documents of 4K decoder tokens (within the decoder's 8K window:
# hybrid reading with soft prompts) and 12K (beyond it). At each length,
# 4 single facts stated and asked in other words than the training templates (reworded_fact,
# at depths 25% and 75%) and 2 facts that need two chunks, built by e2llm eval's own task
# generator (as `e2llm eval --docs` builds them) and answered as `e2llm ask` answers: the
# shipped default in its default mode, greedy.
LICENCE_DIR = Path(__file__).parent / "data" / "licences"
PINNED_LICENCES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.2", "GFDL-1.3", "GPL-1", "GPL-2", "GPL-3",
                   "LGPL-2", "LGPL-2.1", "LGPL-3", "MPL-1.1", "MPL-2.0")
PINNED_LENGTHS = (4096, 12288)  # decoder tokens per document
# Measured 2026-12-02 on the 2-core CPU of this project's machines (docs/defaults.md has the
# command), on the same 14 texts then read from /usr/share/common-licenses (so the same
# items): 9 of 12 right on the bf16-autocast path (this CPU's default: oneDNN has bf16
# matmuls), and 9 of 12 on the fp32 path, with the same 12 answers. The 4K documents are
# read with soft prompts, the 12K ones (beyond soft_prompts_max_tokens) with the 3 raw chunks
# alone. Measured again 2026-12-07 (Intel Xeon with AMX, bf16) after the ranker's BM25 first pass
# became the default (ranker_candidates: 16): 12 of 12.
PINNED_MEASURED = 12
# Greedy decoding is deterministic on one machine, but the bf16 and fp32 paths and other CPUs'
# kernels change the last bits of the chunk encodings and the ranking, which can move a chunk
# in or out of the top 3 or flip a near tie between two answer tokens: up to 2 of the 12 may
# change that way without the checkpoint being worse. A regression that costs 3 answers fails.
PINNED_MARGIN = 2


def pinned_items(engine):
    from e2llm.eval.tasks import calibrate_tokens_per_word, folder_documents, synthetic_items

    docs = folder_documents(LICENCE_DIR)
    assert sorted(d.doc_id.split(":", 1)[-1] for d in docs) == sorted(f"{n}.txt" for n in PINNED_LICENCES), "tests/data/licences changed"
    tok = engine.decoder_tokenizer
    tokens_per_word = calibrate_tokens_per_word(lambda t: len(tok(t, add_special_tokens=False)["input_ids"]), docs)
    facts, _ = synthetic_items(["reworded_fact"], PINNED_LENGTHS, [0.25, 0.75], 4, tokens_per_word=tokens_per_word,
                               docs=docs)
    pairs, _ = synthetic_items(["two_chunk"], PINNED_LENGTHS, [0.5], 2, tokens_per_word=tokens_per_word, docs=docs)
    return facts + pairs


def pinned_answers(engine, items) -> list[tuple[str, str, float]]:
    """(item id, answer, score) per item, answered as the shipped default answers by default."""
    from e2llm.eval import score

    out = []
    for item in items:
        engine.cache.clear()  # cached chunk encodings from other batches differ in the last float bits
        text = engine.generate(item.question, item.context, max_new_tokens=32, stop=list(item.stop))
        out.append((item.item_id, text, score(item.metric, text, item.answers, item.choices, item.answer_index)))
    return out


def test_shipped_default_answers_on_unseen_text(default_engine):
    """The shipped checkpoint, in its default mode, answers at least its measured count of the
    dozen pinned questions, less the margin (PINNED_MARGIN's comment says why): a random adapter,
    an untuned decoder or a broken retrieval or prompt falls below it."""
    items = pinned_items(default_engine)
    assert len(items) == 12 and {i.length for i in items} == set(PINNED_LENGTHS)
    answers = pinned_answers(default_engine, items)
    right = sum(s for _, _, s in answers)
    assert right >= PINNED_MEASURED - PINNED_MARGIN, f"{right}/12 right, pinned {PINNED_MEASURED} - {PINNED_MARGIN}: {answers}"


if __name__ == "__main__":  # measure PINNED_MEASURED: python tests/test_default_models.py [bf16|fp32] [hybrid|raw|default]
    import sys

    path = sys.argv[1] if len(sys.argv) > 1 else "bf16"
    mode = sys.argv[2] if len(sys.argv) > 2 else "default"
    engine = E2LLM.from_pretrained("default")
    if path == "fp32":  # the encoder and the ranking in float32
        engine.autocast_encoder = False
    if mode == "hybrid":  # soft prompts at every length, as shipped before soft_prompts_max_tokens
        engine.config.soft_prompts_max_tokens = None
    elif mode == "raw":  # the raw top-n chunks alone at every length
        engine.config.soft_prompts_max_tokens = 0
    answers = pinned_answers(engine, pinned_items(engine))
    for item_id, text, right in answers:
        print(f"{right:.0f} {item_id}: {text!r}")
    print(f"{path} {mode}: {sum(s for _, _, s in answers):.0f}/12 right")
