"""LlamaIndex plugin: ``E2LLMSynthesizer`` (a response synthesizer that reads every retrieved
node compressed, each node its own chunk group) and ``E2LLMLLM`` (so ``Settings.llm`` can be
e2llm's decoder too).

    query_engine = RetrieverQueryEngine(retriever, response_synthesizer=E2LLMSynthesizer(checkpoint="default"))

Both are built from ``checkpoint=`` (loaded on first use, once, shared) or ``engine=``; neither
ever resolves ``Settings.llm``.
"""
from __future__ import annotations

import asyncio
from typing import Any, Generator, Literal, Optional, Sequence

from . import (LLAMA_INDEX_PIP, athread_iter, check_source, generation_kwargs, get_engine, make_request, result_metadata,
               source_name, split_prompt)

try:
    from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseAsyncGen, CompletionResponseGen, LLMMetadata
    from llama_index.core.bridge.pydantic import Field, model_validator
    from llama_index.core.indices.prompt_helper import ChatPromptHelper, PromptHelper
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llama_index.core.llms.custom import CustomLLM
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.response_synthesizers import BaseSynthesizer
    from llama_index.core.schema import NodeWithScore
except ImportError as e:  # pragma: no cover - exercised with the framework uninstalled
    raise ImportError(f"e2llm's LlamaIndex plugin needs llama-index-core: {LLAMA_INDEX_PIP}") from e

_LLM_KWARGS = {"context", "raw_top_n", "overflow", "max_new_tokens", "temperature"}


class E2LLMLLM(CustomLLM):
    """The e2llm decoder as a LlamaIndex LLM. The prompt is read as ordinary tokens (what
    LlamaIndex's own synthesizers stuff into it); ``complete(q, context=...)`` or a
    ``context_separator`` hands a long context over as soft prompts instead."""

    checkpoint: Optional[str] = Field(default=None, description='checkpoint folder or "default", loaded on first use')
    engine: Optional[Any] = Field(default=None, exclude=True, repr=False, description="a ready e2llm.E2LLM")
    max_new_tokens: Optional[int] = Field(default=None, description="None: the engine's prompt.max_new_tokens")
    temperature: float = Field(default=0.0, description="0 = greedy decoding")
    raw_top_n: Optional[int] = Field(default=None, description="hybrid reading: also read the top n chunks raw")
    overflow: Literal["error", "truncate"] = "error"
    context_separator: Optional[str] = Field(default=None, description="split the prompt into context + question at its last occurrence")

    @model_validator(mode="after")
    def _one_source(self) -> "E2LLMLLM":
        check_source(self.engine, self.checkpoint, "E2LLMLLM")
        return self

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMLLM"

    def _engine(self):
        return get_engine(self.engine, self.checkpoint)

    @property
    def metadata(self) -> LLMMetadata:
        engine = self._engine()
        return LLMMetadata(context_window=engine.window_tokens, model_name=source_name(self.engine, self.checkpoint),
                           num_output=self.max_new_tokens or engine.config.prompt.max_new_tokens)

    def _prepare(self, prompt: str, kwargs: dict):
        bad = set(kwargs) - _LLM_KWARGS
        if bad:
            raise TypeError(f"E2LLMLLM got unexpected argument(s) {sorted(bad)}; it takes {sorted(_LLM_KWARGS)}")
        engine, context = self._engine(), kwargs.get("context")
        if context is None:
            prompt, context = split_prompt(prompt, self.context_separator)
        req = make_request(engine, prompt, context=context, raw_top_n=kwargs.get("raw_top_n", self.raw_top_n))
        gen = generation_kwargs(max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens), top_p=1.0, stop=None,
                                temperature=kwargs.get("temperature", self.temperature), overflow=kwargs.get("overflow", self.overflow))
        return engine, req, {"raw_texts": req.raw_texts, "raw_top_n": req.engine_raw_top_n, **gen}

    def _complete(self, prompt: str, **kwargs: Any) -> CompletionResponse:
        engine, req, gen = self._prepare(prompt, kwargs)
        res = engine.generate(req.question, req.context, return_result=True, **gen)
        return CompletionResponse(text=res.text, additional_kwargs=result_metadata(res, source_name(self.engine, self.checkpoint)))

    def _stream(self, prompt: str, **kwargs: Any) -> CompletionResponseGen:
        engine, req, gen = self._prepare(prompt, kwargs)
        stream, text = engine.stream(req.question, req.context, **gen), ""
        for piece in stream:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield CompletionResponse(text=text, delta="", additional_kwargs=result_metadata(stream.result, source_name(self.engine, self.checkpoint)))

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

    raw_top_n: hybrid reading, the raw text of the top n nodes by retrieval score (0 = pure
    E2LLM; None = engine config). return_citations: source nodes scored by how much the answer
    attended to them (the retrieval score kept in node metadata "retrieval_score"), best first.
    overflow: "error" or "truncate" (Response.metadata["e2llm"]["dropped_chunks"] says how many).
    """

    def __init__(self, checkpoint: Optional[str] = None, engine: Any = None, *, raw_top_n: Optional[int] = None,
                 overflow: Literal["error", "truncate"] = "error", max_new_tokens: Optional[int] = None,
                 temperature: float = 0.0, return_citations: bool = False, streaming: bool = False,
                 callback_manager: Any = None, empty_response: Optional[str] = None) -> None:
        check_source(engine, checkpoint, "E2LLMSynthesizer")
        self._source, self._raw_top_n, self._citations = (engine, checkpoint), raw_top_n, return_citations
        self._gen = generation_kwargs(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, stop=None, overflow=overflow)
        llm = E2LLMLLM(checkpoint=checkpoint, engine=engine, max_new_tokens=max_new_tokens, temperature=temperature, overflow=overflow)
        # e2llm never repacks text, so the prompt helpers are placeholders: passing them keeps the
        # engine unloaded until first use (and needs no tiktoken); the explicit llm keeps Settings.llm unresolved
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming, empty_response=empty_response,
                         prompt_helper=PromptHelper(tokenizer=str.split), chat_prompt_helper=ChatPromptHelper(tokenizer=str.split))

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
    def get_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any):
        sink = kwargs.pop("_e2llm_sink", {})
        engine = self._engine()
        req = make_request(engine, query_str, texts=list(text_chunks), scores=sink.get("scores"), raw_top_n=self._raw_top_n)
        sink["num_nodes"] = len(text_chunks)
        if not self._streaming:
            sink["result"] = engine.generate(req.question, req.context, raw_texts=req.raw_texts, raw_top_n=0,
                                             return_citations=self._citations, return_result=True, **self._gen)
            return sink["result"].text
        stream = engine.stream(req.question, req.context, raw_texts=req.raw_texts, raw_top_n=0,
                               return_citations=self._citations, **self._gen)

        def pieces() -> Generator[str, None, None]:
            yield from stream
            sink["result"] = stream.result
            if "response" in sink:
                self._finish(sink)
        return pieces()

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any):
        out = await asyncio.to_thread(self.get_response, query_str, text_chunks, **kwargs)
        return athread_iter(out) if self._streaming else out

    def _finish(self, sink: dict):
        """Usage, dropped chunks and citations onto the response, once both exist."""
        response, res, n = sink["response"], sink["result"], sink["num_nodes"]
        meta = result_metadata(res, source_name(*self._source), n)
        if meta.get("citations"):
            scores = {c["document_index"]: c["score"] for c in meta["citations"]}
            cited = []
            for i, nws in enumerate(response.source_nodes[:n]):
                node = nws.node.model_copy()
                node.metadata = {**nws.node.metadata, "retrieval_score": nws.score}
                node.excluded_llm_metadata_keys = [*nws.node.excluded_llm_metadata_keys, "retrieval_score"]
                node.excluded_embed_metadata_keys = [*nws.node.excluded_embed_metadata_keys, "retrieval_score"]
                cited.append(NodeWithScore(node=node, score=scores.get(i, 0.0)))
            cited.sort(key=lambda x: -x.score)  # stable: ties keep retrieval order
            response.source_nodes = cited + list(response.source_nodes[n:])
            response.metadata = {**(response.metadata or {}), **{c.node.node_id: c.node.metadata for c in cited}}
        response.metadata = {**(response.metadata or {}), "e2llm": meta}
        return response

    def _start(self, nodes: list, kwargs: dict) -> dict:
        sink = {"scores": [n.score for n in nodes]}
        kwargs["_e2llm_sink"] = sink
        return sink

    def synthesize(self, query: Any, nodes: list, additional_source_nodes: Optional[Sequence] = None, **kwargs: Any):
        sink = self._start(nodes, kwargs)
        sink["response"] = response = super().synthesize(query, nodes, additional_source_nodes, **kwargs)
        return self._finish(sink) if "result" in sink else response

    async def asynthesize(self, query: Any, nodes: list, additional_source_nodes: Optional[Sequence] = None, **kwargs: Any):
        sink = self._start(nodes, kwargs)
        sink["response"] = response = await super().asynthesize(query, nodes, additional_source_nodes, **kwargs)
        return self._finish(sink) if "result" in sink else response
