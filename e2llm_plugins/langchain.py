"""LangChain plugin: ``E2LLM`` (an LLM), ``ChatE2LLM`` (a chat model),
``create_e2llm_documents_chain`` (a drop-in for ``create_stuff_documents_chain``) and
``E2LLMEmbeddings`` (the encoder's ranking vectors, so one model retrieves and reads).

The long context reaches the model as ``documents=[Document, ...]`` or ``context=...`` call
arguments (``llm.invoke(q, documents=docs)``, ``llm.bind(documents=docs)``), as ``text-plain``
content blocks in chat messages, or (``E2LLM``, only when ``context_separator`` is set) inside
the prompt: the text before the last separator is the document. By default the whole prompt is
the question. Each Document is its own chunk group. Models are built from ``checkpoint=`` (a
folder, a Path or "default"; loaded on first use, once per checkpoint, device, dtype and
quantization, and shared) or ``engine=``; constructors load nothing.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional

from ._common import (LANGCHAIN_PIP, BatchWhileBusy, athread_iter, decoder_tokenizer, embed, fold_messages, generation_kwargs,
                      known_params, make_request, result_metadata, source_name, split_prompt, usage, usage_metadata)
from ._source import EngineSource

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel, LangSmithParams
    from langchain_core.language_models.llms import LLM
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation, GenerationChunk, LLMResult
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import BasePromptTemplate, PromptTemplate
    from langchain_core.runnables import Runnable, RunnableLambda
    from langchain_core.runnables.config import run_in_executor
    from pydantic import Field, PrivateAttr, model_validator
except ImportError as e:  # pragma: no cover - exercised with the framework uninstalled
    raise ImportError(f"e2llm's LangChain plugin needs langchain-core: {LANGCHAIN_PIP}") from e

_CALL_KWARGS = {"documents", "context", "raw_top_n", "overflow", "max_tokens", "temperature", "top_p", "return_citations"}
_IGNORED_CALL = {"model", "stream"}  # set by LangChain itself for tracing / streaming
_NO_TOOLS = ("e2llm has no tool calling or structured output (its small decoder was not trained for either): it answers "
             "in text from documents given as documents=/context= or text-plain blocks; parse that text instead")


class _Source(EngineSource):
    """An engine source with the name LangChain's tracing shows."""

    @property
    def model_name(self) -> str:
        return source_name(self.engine, self.checkpoint)


class E2LLMEmbeddings(_Source, Embeddings):
    """Unit vectors from e2llm's encoder, the ones its hybrid reading ranks chunks with, so the
    retriever and the reader agree (``InMemoryVectorStore(E2LLMEmbeddings(checkpoint="default"))``).
    Built like the models (checkpoint=, device=, dtype=, quantization= or engine=) and sharing
    their engine; a text longer than one chunk is the mean of its chunks' vectors."""

    model_config = {"extra": "forbid"}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed(self._engine(), texts)

    def embed_query(self, text: str) -> list[float]:
        return embed(self._engine(), [text])[0]


class _E2LLMParams(_Source):
    """Settings shared by the LLM and the chat model.

    checkpoint: a folder (str or Path) or "default", loaded on first use (neither this nor
    engine: "default"); device ("cpu", "cuda", "cuda:1", "auto"), dtype ("float32",
    "bfloat16", "float16") and quantization (the decoder's base weights: "none", or "4bit" on
    CUDA with bitsandbytes) say how to load it (None: E2LLM.from_pretrained's defaults); engine:
    a ready e2llm.E2LLM. max_tokens: new tokens at most (None: the checkpoint's
    prompt.max_new_tokens); temperature 0 = greedy. raw_top_n: hybrid reading, also the raw
    text of the n chunks most similar to the question, across all documents (0 = compressed
    only, None = the checkpoint's raw_top_n). overflow: documents beyond the window raise
    ("error") or keep the chunks most similar to the question ("truncate").
    return_citations: score each document by the answer's attention (one more forward pass) in
    the metadata "citations", and set Document.metadata["citation_score"] on the Documents given.
    """

    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Optional[list[str]] = None
    raw_top_n: Optional[int] = None
    overflow: Literal["error", "truncate"] = "error"
    return_citations: bool = False
    streaming: bool = False
    _batcher: BatchWhileBusy = PrivateAttr(default_factory=BatchWhileBusy)

    @model_validator(mode="before")
    @classmethod
    def _known_params(cls, values: Any) -> Any:
        return known_params(cls.__name__, values, cls.model_fields, _E2LLMParams.model_fields)

    def get_token_ids(self, text: str) -> list[int]:
        """The decoder's own tokens, offline (langchain-core's fallback downloads GPT-2's
        tokenizer and counts another model's tokens); get_num_tokens and
        get_num_tokens_from_messages count with it. Loads the tokenizer, not the weights."""
        if getattr(self, "custom_get_token_ids", None) is not None:
            return self.custom_get_token_ids(text)
        return decoder_tokenizer(self.engine, self.checkpoint).encode(text, add_special_tokens=False)

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_NO_TOOLS)

    def _options(self, stop: Optional[list[str]], kwargs: dict) -> dict:
        bad = set(kwargs) - _CALL_KWARGS - _IGNORED_CALL
        if bad:
            raise TypeError(f"{type(self).__name__} got unexpected argument(s) {sorted(bad)}; it takes {sorted(_CALL_KWARGS)}")
        if kwargs.get("documents") is not None and kwargs.get("context") is not None:
            raise ValueError("pass documents= or context=, not both")
        get = lambda k: kwargs[k] if kwargs.get(k) is not None else getattr(self, k)  # noqa: E731
        gen = generation_kwargs(max_new_tokens=get("max_tokens"), temperature=get("temperature"), top_p=get("top_p"),
                                stop=[*(self.stop or []), *(stop or [])], overflow=get("overflow"), limit_name="max_tokens")
        return {"gen": gen, "documents": kwargs.get("documents"), "context": kwargs.get("context"),
                "raw_top_n": get("raw_top_n"), "citations": bool(get("return_citations"))}

    def _request(self, question: str, opts: dict, documents: Any = None, separator: Optional[str] = None):
        """(Request, the Documents given), checked before any model loads; without documents or
        context, the prompt holds the context only when a separator is set."""
        raw_top_n, context = opts["raw_top_n"], opts["context"]
        if documents is not None:
            docs = [documents] if isinstance(documents, (str, Document)) else list(documents)
            texts = [d.page_content if isinstance(d, Document) else d for d in docs]
            return make_request(question, texts=texts, raw_top_n=raw_top_n), docs
        if context is None:
            question, context = split_prompt(question, separator)
        return make_request(question, context=context, raw_top_n=raw_top_n), []

    def _run(self, requests: list, opts: dict) -> list:
        """One padded batch through the engine, shared with concurrent calls that have the same
        options -> [(GenerationResult, metadata)]; citations onto the Documents."""
        reqs, engine = [r for r, _ in requests], self._engine()
        key = (repr(sorted(opts["gen"].items())), opts["citations"], reqs[0].raw_top_n)
        results = self._batcher.run(key, reqs, lambda group: engine.generate_batch(
            [r.question for r in group], [r.context for r in group], raw_top_n=group[0].raw_top_n,
            return_citations=opts["citations"], return_result=True, **opts["gen"]))
        out = []
        for (req, docs), res in zip(requests, results):
            meta = result_metadata(res, self.model_name, req.num_documents)
            for cite in meta.get("citations", []):
                if cite["document_index"] < len(docs) and isinstance(docs[cite["document_index"]], Document):
                    docs[cite["document_index"]].metadata["citation_score"] = cite["score"]
            out.append((res, meta))
        return out

    def _pieces(self, req, opts: dict, run_manager, make: Callable[[str, Optional[dict]], Any]) -> Iterator:
        """A chunk per text piece (langchain-core >= 1 reports chat chunks itself), then an empty one with the metadata."""
        stream = self._engine().stream(req.question, req.context, raw_top_n=req.raw_top_n,
                                       return_citations=opts["citations"], **opts["gen"])
        for piece in stream:
            chunk = make(piece, None)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield make("", result_metadata(stream.result, self.model_name, req.num_documents))

    async def _astream(self, prompt_or_messages: Any, stop: Optional[list[str]] = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator:
        """The sync stream pulled from worker threads: the event loop never waits on the model."""
        async for chunk in athread_iter(self._stream(prompt_or_messages, stop, None, **kwargs)):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _ls(self, kind: str, stop: Optional[list[str]], kwargs: dict) -> LangSmithParams:
        max_tokens, stop = kwargs.get("max_tokens", self.max_tokens), stop or self.stop
        return LangSmithParams(ls_provider="e2llm", ls_model_type=kind, ls_temperature=kwargs.get("temperature", self.temperature),
                               ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
                               **({"ls_max_tokens": max_tokens} if max_tokens is not None else {}), **({"ls_stop": stop} if stop else {}))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "checkpoint": self.checkpoint, "device": self.device, "dtype": self.dtype,
                "quantization": self.quantization, "max_tokens": self.max_tokens, "top_p": self.top_p,
                "temperature": self.temperature, "raw_top_n": self.raw_top_n, "overflow": self.overflow,
                "context_separator": getattr(self, "context_separator", None)}


_Run, _ARun, _Stop = Optional[CallbackManagerForLLMRun], Optional[AsyncCallbackManagerForLLMRun], Optional[list[str]]


class E2LLM(_E2LLMParams, LLM):
    """An LLM over e2llm: ``llm.invoke("What does it say?", documents=docs)``. The whole prompt
    is the question (read as ordinary tokens) unless ``context_separator`` is set: then the text
    before its last occurrence is the document. ``batch()`` runs as one padded forward pass;
    ``batch(prompts, documents=[docs_1, docs_2, ...])`` gives each prompt its own documents."""

    context_separator: Optional[str] = None

    @property
    def _llm_type(self) -> str:
        return "e2llm"

    def _get_ls_params(self, stop: _Stop = None, **kwargs: Any) -> LangSmithParams:
        return self._ls("llm", stop, kwargs)

    def _generate(self, prompts: list[str], stop: _Stop = None, run_manager: _Run = None, **kwargs: Any) -> LLMResult:
        if self.streaming and len(prompts) == 1:  # token callbacks fire during invoke too
            chunks = list(self._stream(prompts[0], stop, run_manager, **kwargs))
            chunk = sum(chunks[1:], chunks[0])
            return LLMResult(generations=[[Generation(text=chunk.text, generation_info=chunk.generation_info)]])
        opts = self._options(stop, kwargs)
        docs = opts["documents"]
        per_prompt = (len(prompts) > 1 and isinstance(docs, (list, tuple)) and len(docs) == len(prompts)
                      and all(isinstance(d, (list, tuple)) for d in docs))
        done = self._run([self._request(p, opts, docs[i] if per_prompt else docs, self.context_separator)
                          for i, p in enumerate(prompts)], opts)
        total = {k: sum(usage(r)[k] for r, _ in done) for k in ("input_tokens", "output_tokens", "total_tokens", "soft_tokens")}
        return LLMResult(generations=[[Generation(text=r.text, generation_info=m)] for r, m in done],
                         llm_output={"token_usage": total, "model_name": self.model_name})

    async def _agenerate(self, prompts: list[str], stop: _Stop = None, run_manager: _ARun = None, **kwargs: Any) -> LLMResult:
        return await run_in_executor(None, self._generate, prompts, stop, run_manager.get_sync() if run_manager else None, **kwargs)

    def _call(self, prompt: str, stop: _Stop = None, run_manager: _Run = None, **kwargs: Any) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    async def _acall(self, prompt: str, stop: _Stop = None, run_manager: _ARun = None, **kwargs: Any) -> str:
        return (await self._agenerate([prompt], stop, run_manager, **kwargs)).generations[0][0].text

    def _stream(self, prompt: str, stop: _Stop = None, run_manager: _Run = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        opts = self._options(stop, kwargs)
        req, _ = self._request(prompt, opts, opts["documents"], self.context_separator)
        yield from self._pieces(req, opts, run_manager, lambda text, meta: GenerationChunk(text=text, generation_info=meta))


class ChatE2LLM(_E2LLMParams, BaseChatModel):
    """A chat model over e2llm: the messages are folded into the question; documents come as
    ``documents=``/``context=`` arguments or as ``text-plain`` content blocks in a message.
    ``batch()`` (a thread per input) shares padded engine passes: the calls that arrive while
    one is answered run together next."""

    @property
    def _llm_type(self) -> str:
        return "e2llm-chat"

    def _get_ls_params(self, stop: _Stop = None, **kwargs: Any) -> LangSmithParams:
        return self._ls("chat", stop, kwargs)

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_NO_TOOLS)

    def _prepare(self, messages: list[BaseMessage], stop: _Stop, kwargs: dict):
        question, docs = fold_messages(messages)
        opts = self._options(stop, kwargs)
        if docs and opts["context"] is not None:
            raise ValueError("documents came both in the messages and as context=; pass them one way")
        given = opts["documents"]
        documents = [*([] if given is None else [given] if isinstance(given, (str, Document)) else given), *docs]
        return self._request(question, opts, documents if given is not None or docs else None), opts

    def _generate(self, messages: list[BaseMessage], stop: _Stop = None, run_manager: _Run = None, **kwargs: Any) -> ChatResult:
        request, opts = self._prepare(messages, stop, kwargs)
        ((res, meta),) = self._run([request], opts)
        message = AIMessage(content=res.text, response_metadata=meta, usage_metadata=usage_metadata(res))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _stream(self, messages: list[BaseMessage], stop: _Stop = None, run_manager: _Run = None, **kwargs: Any) -> Iterator:
        (req, _), opts = self._prepare(messages, stop, kwargs)
        yield from self._pieces(req, opts, run_manager, lambda text, meta: ChatGenerationChunk(message=AIMessageChunk(
            content=text) if meta is None else AIMessageChunk(content="", response_metadata=meta, chunk_position="last",
                                                             usage_metadata=usage_metadata(meta))))


def create_e2llm_documents_chain(llm: E2LLM | ChatE2LLM, prompt: Optional[BasePromptTemplate] = None, *,
                                 output_parser: Optional[Runnable] = None, document_variable_name: str = "context") -> Runnable:
    """Like ``create_stuff_documents_chain``: takes ``{"input": ..., "context": [Document, ...]}``
    and returns the answer string, but hands the Documents to the model as documents (each its
    own chunk group) instead of joining them into the prompt. `prompt` formats the question
    from the other input keys (default ``"{input}"``) and must not use the documents' key."""
    if not isinstance(llm, (E2LLM, ChatE2LLM)):
        raise TypeError(f"create_e2llm_documents_chain needs an e2llm model (E2LLM or ChatE2LLM), got {type(llm).__name__}; "
                        "for other models use create_stuff_documents_chain")
    prompt = prompt if prompt is not None else PromptTemplate.from_template("{input}")
    if document_variable_name in prompt.input_variables:
        raise ValueError(f"the prompt uses {{{document_variable_name}}}, but e2llm reads the documents as soft prompts, "
                         f"not as prompt text; remove {{{document_variable_name}}} from the prompt")

    def route(inputs: dict) -> Runnable:
        if document_variable_name not in inputs:
            raise ValueError(f"the documents chain needs the documents under '{document_variable_name}', got keys {sorted(inputs)}")
        docs = list(inputs[document_variable_name])
        rest = {k: v for k, v in inputs.items() if k != document_variable_name}
        parser = StrOutputParser() if output_parser is None else output_parser
        return RunnableLambda(lambda _: rest, name="question_inputs") | prompt | llm.bind(documents=docs) | parser

    return RunnableLambda(route, name="e2llm_documents_chain").with_config(run_name="e2llm_documents_chain")
