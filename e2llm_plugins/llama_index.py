"""LlamaIndex plugin: ``E2LLMSynthesizer`` (a response synthesizer that reads every retrieved
node compressed, each node its own chunk group), ``E2LLMLLM`` (so ``Settings.llm`` can be
e2llm's decoder too) and ``E2LLMEmbedding`` (the encoder's ranking vectors, so one model
retrieves and reads).

    query_engine = RetrieverQueryEngine(retriever, response_synthesizer=E2LLMSynthesizer(checkpoint="default"))

All are built from ``checkpoint=`` (a folder, a Path or "default"; loaded on first use, once
per checkpoint, device, dtype and quantization, and shared) or ``engine=``; none ever resolves
``Settings.llm``. The synthesizer answers through its E2LLMLLM's instrumented ``complete``, so
LlamaIndex's LLM events and callbacks (``TokenCountingHandler``) see every answer. Retrieval
scores stay the retriever's: the answer's citation share goes into each source node's metadata
(``citation_score``).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from functools import partial
from typing import Any, Callable, Generator, Literal, Optional, Sequence, Union

from ._common import (LLAMA_INDEX_PIP, athread_iter, check_source, checkpoint_name, decoder_tokenizer, embed, generation_kwargs,
                      get_engine, make_request, model_limits, result_metadata, source_name, split_prompt, usage)
from ._source import EngineSource

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.base.llms.generic_utils import (astream_completion_response_to_chat_response,
                                                          completion_response_to_chat_response)
    from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, CompletionResponse,
                                                  CompletionResponseAsyncGen, CompletionResponseGen, LLMMetadata)
    from llama_index.core.bridge.pydantic import Field, model_validator
    from llama_index.core.indices.prompt_helper import ChatPromptHelper, PromptHelper
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.custom import CustomLLM
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.response_synthesizers import BaseSynthesizer
    from llama_index.core.schema import NodeWithScore
except ImportError as e:  # pragma: no cover - exercised with the framework uninstalled
    raise ImportError(f"e2llm's LlamaIndex plugin needs llama-index-core: {LLAMA_INDEX_PIP}") from e

_LLM_KWARGS = {"context", "documents", "raw_top_n", "overflow", "max_new_tokens", "temperature", "return_citations"}


class E2LLMEmbedding(EngineSource, BaseEmbedding):
    """Unit vectors from e2llm's encoder, the ones its hybrid reading ranks chunks with, so the
    retriever and the reader agree: ``VectorStoreIndex(nodes, embed_model=E2LLMEmbedding(checkpoint="default"))``.
    A text longer than one chunk is the mean of its chunks' vectors. Async calls run in a thread."""

    embed_batch_size: int = Field(default=64, gt=0, description="texts per call (the engine batches its own passes)")
    model_name: str = Field(default="", description="set from checkpoint / engine")

    @model_validator(mode="after")
    def _name(self) -> "E2LLMEmbedding":
        self.model_name = self.model_name or source_name(self.engine, self.checkpoint)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed(self._engine(), [query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed(self._engine(), [text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return embed(self._engine(), texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class E2LLMLLM(EngineSource, CustomLLM):
    """The e2llm decoder as a LlamaIndex LLM. The prompt is read as ordinary tokens (what
    LlamaIndex's own synthesizers stuff into it); ``complete(q, context=...)``,
    ``complete(q, documents=[text, ...])`` (each its own chunk group) or a ``context_separator``
    hands a long context over as soft prompts instead. Async calls run in worker threads.
    Responses carry ``raw["usage"]`` (what TokenCountingHandler reads) and the e2llm metadata in
    ``additional_kwargs``."""

    max_new_tokens: Optional[int] = Field(default=None, ge=1, description="None: the checkpoint's prompt.max_new_tokens")
    temperature: float = Field(default=0.0, description="0 = greedy decoding")
    raw_top_n: Optional[int] = Field(default=None, description="hybrid reading: also read the top n chunks raw (None: the checkpoint's)")
    overflow: Literal["error", "truncate"] = "error"
    context_separator: Optional[str] = Field(default=None, description="split the prompt into context + question at its last occurrence")

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMLLM"

    @property
    def metadata(self) -> LLMMetadata:
        """From the config files while no engine is loaded: asking loads no weights."""
        window, num_output = model_limits(self.engine, self.checkpoint)
        return LLMMetadata(context_window=window, model_name=source_name(self.engine, self.checkpoint),
                           num_output=self.max_new_tokens or num_output)

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """The decoder's token ids of a text, loaded without weights: ``Settings.tokenizer =
        llm.tokenizer`` makes LlamaIndex's prompt helpers count as the decoder does, offline."""
        return partial(decoder_tokenizer(self.engine, self.checkpoint).encode, add_special_tokens=False)

    def to_payload(self) -> dict[str, Any]:
        """What instrumentation events carry: the settings alone (it reads no file and loads
        nothing), so bad input is still rejected before any model loads."""
        return {"class_name": self.class_name(), "model_name": source_name(self.engine, self.checkpoint),
                "device": self.device, "dtype": self.dtype, "quantization": self.quantization,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "raw_top_n": self.raw_top_n, "overflow": self.overflow}

    def _prepare(self, prompt: str, kwargs: dict):
        bad = set(kwargs) - _LLM_KWARGS
        if bad:
            raise TypeError(f"E2LLMLLM got unexpected argument(s) {sorted(bad)}; it takes {sorted(_LLM_KWARGS)}")
        context, documents, raw_top_n = kwargs.get("context"), kwargs.get("documents"), kwargs.get("raw_top_n", self.raw_top_n)
        if documents is not None and context is not None:
            raise ValueError("pass documents= or context=, not both")
        if documents is None and context is None:
            prompt, context = split_prompt(prompt, self.context_separator)
        req = (make_request(prompt, texts=documents, raw_top_n=raw_top_n) if documents is not None
               else make_request(prompt, context=context, raw_top_n=raw_top_n))
        gen = generation_kwargs(max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens), top_p=1.0, stop=None,
                                temperature=kwargs.get("temperature", self.temperature), overflow=kwargs.get("overflow", self.overflow))
        return self._engine(), req, {"raw_top_n": req.raw_top_n, "return_citations": bool(kwargs.get("return_citations")), **gen}

    def _response(self, text: str, result: Any, req: Any, delta: Optional[str] = None) -> CompletionResponse:
        """The e2llm metadata, and the usage in OpenAI's names in raw, where TokenCountingHandler looks."""
        u, meta = usage(result), result_metadata(result, source_name(self.engine, self.checkpoint), req.num_documents)
        raw = {"usage": {"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"], "total_tokens": u["total_tokens"]}}
        return CompletionResponse(text=text, delta=delta, additional_kwargs=meta, raw=raw)

    def _complete(self, prompt: str, **kwargs: Any) -> CompletionResponse:
        engine, req, gen = self._prepare(prompt, kwargs)
        res = engine.generate(req.question, req.context, return_result=True, **gen)
        return self._response(res.text, res, req)

    def _stream(self, prompt: str, **kwargs: Any) -> CompletionResponseGen:
        engine, req, gen = self._prepare(prompt, kwargs)
        stream, text = engine.stream(req.question, req.context, **gen), ""
        for piece in stream:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield self._response(text, stream.result, req, delta="")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return athread_iter(self._stream(prompt, **kwargs))

    # CustomLLM's async chat runs the sync chat on the event loop: these go through the threaded completions
    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return completion_response_to_chat_response(await self.acomplete(self.messages_to_prompt(messages), formatted=True, **kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return astream_completion_response_to_chat_response(
            await self.astream_complete(self.messages_to_prompt(messages), formatted=True, **kwargs))


def set_instruction_template(engine, template: str) -> None:
    """Replace the engine's prompt.user (``{document}``/``{question}``; LlamaIndex's
    ``{context_str}``/``{query_str}`` are accepted too). Changes the engine for all its users."""
    text = template.replace("{context_str}", "{document}").replace("{query_str}", "{question}")
    try:
        engine.set_prompt(user=text)
    except ValueError as e:
        raise ValueError(f"the e2llm instruction template needs {{document}} (or {{context_str}}) and {{question}} "
                         f"(or {{query_str}}) exactly once each, got {template!r}") from e


class E2LLMSynthesizer(BaseSynthesizer):
    """Answers from all retrieved nodes, each compressed into soft prompts (its own chunk group).

    raw_top_n: hybrid reading, also the raw text of the n chunks most similar to the question,
    across all nodes (0 = compressed only; None = the checkpoint's raw_top_n). return_citations:
    the share of the answer's attention each node got, in its metadata "citation_score" (one
    more forward pass); NodeWithScore.score and the node order stay the retriever's. overflow:
    "error" or "truncate" (Response.metadata["e2llm"]["dropped_chunks"] says how many).
    device/dtype/quantization: how to load checkpoint= (None: E2LLM.from_pretrained's defaults).
    """

    def __init__(self, checkpoint: Union[str, Path, None] = None, engine: Any = None, *, device: Optional[str] = None,
                 dtype: Optional[str] = None, quantization: Optional[str] = None, raw_top_n: Optional[int] = None,
                 overflow: Literal["error", "truncate"] = "error",
                 max_new_tokens: Optional[int] = None, temperature: float = 0.0, return_citations: bool = False,
                 streaming: bool = False, callback_manager: Any = None, empty_response: Optional[str] = None) -> None:
        checkpoint = checkpoint_name(checkpoint)
        check_source(engine, checkpoint, "E2LLMSynthesizer", device, dtype, quantization)
        self._source = (engine, checkpoint, device, dtype, quantization)
        self._raw_top_n, self._citations = raw_top_n, return_citations
        generation_kwargs(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, stop=None, overflow=overflow)  # checked now
        llm = E2LLMLLM(checkpoint=checkpoint, engine=engine, device=device, dtype=dtype, quantization=quantization,
                       max_new_tokens=max_new_tokens, temperature=temperature, overflow=overflow)
        # e2llm never repacks text, so the prompt helpers are placeholders: passing them keeps the
        # engine unloaded until first use (and needs no tiktoken); the explicit llm keeps Settings.llm unresolved
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming, empty_response=empty_response,
                         prompt_helper=PromptHelper(tokenizer=str.split), chat_prompt_helper=ChatPromptHelper(tokenizer=str.split))
        self._llm.callback_manager = self._callback_manager  # Settings.callback_manager by default: its handlers see the answers

    @property
    def llm(self) -> E2LLMLLM:
        return self._llm

    def _engine(self):
        return get_engine(*self._source)

    def _get_prompts(self) -> dict:
        return {"text_qa_template": PromptTemplate(self._engine().config.prompt.user)}

    def _update_prompts(self, prompts: dict) -> None:
        if "text_qa_template" in prompts:
            set_instruction_template(self._engine(), prompts["text_qa_template"].get_template())

    # ------------------------------------------------------------ answering
    def _ask(self, query_str: str, text_chunks: Sequence[str], kwargs: dict) -> tuple[dict, dict]:
        """(the LLM's keyword arguments, the sink for its metadata); the nodes are checked before any load."""
        req = make_request(query_str, texts=list(text_chunks), raw_top_n=self._raw_top_n)
        sink = kwargs.pop("_e2llm_sink", {})
        sink["num_nodes"] = len(text_chunks)
        return {"documents": req.context, "raw_top_n": req.raw_top_n, "return_citations": self._citations}, sink

    def _done(self, sink: dict, response: CompletionResponse) -> None:
        sink["meta"] = response.additional_kwargs  # the LLM's result_metadata
        if "response" in sink:  # a stream that ended after synthesize returned
            self._finish(sink)

    def get_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any):
        ask, sink = self._ask(query_str, text_chunks, kwargs)
        if not self._streaming:
            response = self._llm.complete(query_str, **ask)
            self._done(sink, response)
            return response.text
        responses = self._llm.stream_complete(query_str, **ask)

        def pieces() -> Generator[str, None, None]:
            for r in responses:
                if r.delta:
                    yield r.delta
            self._done(sink, r)
        return pieces()

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any):
        ask, sink = self._ask(query_str, text_chunks, kwargs)
        if not self._streaming:
            response = await self._llm.acomplete(query_str, **ask)
            self._done(sink, response)
            return response.text
        responses = await self._llm.astream_complete(query_str, **ask)

        async def pieces():
            async for r in responses:
                if r.delta:
                    yield r.delta
            self._done(sink, r)
        return pieces()

    def _finish(self, sink: dict):
        """Usage, dropped chunks and citations onto the response, once both exist. A cited node
        is a copy (the stored node is untouched) whose metadata holds ``citation_score``; its
        score and place stay the retriever's."""
        response, meta, n = sink["response"], dict(sink["meta"]), sink["num_nodes"]
        if meta.get("citations"):
            scores = {c["document_index"]: c["score"] for c in meta["citations"]}
            cited = []
            for i, nws in enumerate(response.source_nodes[:n]):
                node = nws.node.model_copy()
                node.metadata = {**nws.node.metadata, "citation_score": scores.get(i, 0.0)}
                node.excluded_llm_metadata_keys = [*nws.node.excluded_llm_metadata_keys, "citation_score"]
                node.excluded_embed_metadata_keys = [*nws.node.excluded_embed_metadata_keys, "citation_score"]
                cited.append(NodeWithScore(node=node, score=nws.score))
            response.source_nodes = cited + list(response.source_nodes[n:])
            response.metadata = {**(response.metadata or {}), **{c.node.node_id: c.node.metadata for c in cited}}
        response.metadata = {**(response.metadata or {}), "e2llm": meta}
        return response

    def _start(self, nodes: list, kwargs: dict) -> dict:
        sink: dict = {}
        kwargs["_e2llm_sink"] = sink
        return sink

    def synthesize(self, query: Any, nodes: list, additional_source_nodes: Optional[Sequence] = None, **kwargs: Any):
        sink = self._start(nodes, kwargs)
        sink["response"] = response = super().synthesize(query, nodes, additional_source_nodes, **kwargs)
        return self._finish(sink) if "meta" in sink else response

    async def asynthesize(self, query: Any, nodes: list, additional_source_nodes: Optional[Sequence] = None, **kwargs: Any):
        sink = self._start(nodes, kwargs)
        sink["response"] = response = await super().asynthesize(query, nodes, additional_source_nodes, **kwargs)
        return self._finish(sink) if "meta" in sink else response
