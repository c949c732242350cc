"""LlamaIndex plugin: ``E2LLMSynthesizer`` (a response synthesizer that reads every retrieved
node compressed, each node its own chunk group) and ``E2LLMLLM`` (so ``Settings.llm`` can be
e2llm's decoder too).

    query_engine = RetrieverQueryEngine(retriever, response_synthesizer=E2LLMSynthesizer(checkpoint="default"))

Both are built from ``checkpoint=`` (a folder, a Path or "default"; loaded on first use, once
per checkpoint, device, dtype and quantization, and shared) or ``engine=``; neither ever resolves
``Settings.llm``. Retrieval scores stay the retriever's: the answer's citation share goes into
each source node's metadata (``citation_score``).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Generator, Literal, Optional, Sequence, Union

from ._common import (LLAMA_INDEX_PIP, athread_iter, check_source, checkpoint_name, generation_kwargs, get_engine,
                      make_request, result_metadata, source_name, split_prompt)

try:
    from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseAsyncGen, CompletionResponseGen, LLMMetadata
    from llama_index.core.bridge.pydantic import Field, field_validator, model_validator
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

    checkpoint: Optional[str] = Field(default=None, description='checkpoint folder (str or Path) or "default", loaded on first use')
    device: Optional[str] = Field(default=None, description='"cpu", "cuda", "cuda:1" or "auto"; None: from_pretrained\'s default')
    dtype: Optional[str] = Field(default=None, description='"float32", "bfloat16" or "float16"; None: from_pretrained\'s default')
    quantization: Optional[str] = Field(default=None, description='the decoder\'s base weights: "none", or "4bit" (CUDA and '
                                        'bitsandbytes); None: what the checkpoint was trained with')
    engine: Optional[Any] = Field(default=None, exclude=True, repr=False, description="a ready e2llm.E2LLM")
    max_new_tokens: Optional[int] = Field(default=None, ge=1, description="None: the checkpoint's prompt.max_new_tokens")
    temperature: float = Field(default=0.0, description="0 = greedy decoding")
    raw_top_n: Optional[int] = Field(default=None, description="hybrid reading: also read the top n chunks raw (None: the checkpoint's)")
    overflow: Literal["error", "truncate"] = "error"
    context_separator: Optional[str] = Field(default=None, description="split the prompt into context + question at its last occurrence")

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _path_to_str(cls, value: Union[str, Path, None]) -> Optional[str]:
        return checkpoint_name(value)

    @model_validator(mode="after")
    def _one_source(self) -> "E2LLMLLM":
        check_source(self.engine, self.checkpoint, "E2LLMLLM", self.device, self.dtype, self.quantization)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMLLM"

    def _engine(self):
        return get_engine(self.engine, self.checkpoint, self.device, self.dtype, self.quantization)

    @property
    def metadata(self) -> LLMMetadata:
        engine = self._engine()
        return LLMMetadata(context_window=engine.window_tokens, model_name=source_name(self.engine, self.checkpoint),
                           num_output=self.max_new_tokens or engine.config.prompt.max_new_tokens)

    def to_payload(self) -> dict[str, Any]:
        """What instrumentation events carry; unlike ``metadata`` it never loads the engine, so
        bad input is still rejected before any model loads."""
        return {"class_name": self.class_name(), "model_name": source_name(self.engine, self.checkpoint),
                "device": self.device, "dtype": self.dtype, "quantization": self.quantization,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "raw_top_n": self.raw_top_n, "overflow": self.overflow}

    def _prepare(self, prompt: str, kwargs: dict):
        bad = set(kwargs) - _LLM_KWARGS
        if bad:
            raise TypeError(f"E2LLMLLM got unexpected argument(s) {sorted(bad)}; it takes {sorted(_LLM_KWARGS)}")
        context = kwargs.get("context")
        if context is None:
            prompt, context = split_prompt(prompt, self.context_separator)
        req = make_request(prompt, context=context, raw_top_n=kwargs.get("raw_top_n", self.raw_top_n))
        gen = generation_kwargs(max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens), top_p=1.0, stop=None,
                                temperature=kwargs.get("temperature", self.temperature), overflow=kwargs.get("overflow", self.overflow))
        return self._engine(), req, {"raw_top_n": req.raw_top_n, **gen}

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
        self._gen = generation_kwargs(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, stop=None, overflow=overflow)
        llm = E2LLMLLM(checkpoint=checkpoint, engine=engine, device=device, dtype=dtype, quantization=quantization,
                       max_new_tokens=max_new_tokens, temperature=temperature, overflow=overflow)
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
        req = make_request(query_str, texts=list(text_chunks), raw_top_n=self._raw_top_n)  # checked before loading
        engine = self._engine()
        sink["num_nodes"] = len(text_chunks)
        if not self._streaming:
            sink["result"] = engine.generate(req.question, req.context, raw_top_n=req.raw_top_n,
                                             return_citations=self._citations, return_result=True, **self._gen)
            return sink["result"].text
        stream = engine.stream(req.question, req.context, raw_top_n=req.raw_top_n, return_citations=self._citations, **self._gen)

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
        """Usage, dropped chunks and citations onto the response, once both exist. A cited node
        is a copy (the stored node is untouched) whose metadata holds ``citation_score``; its
        score and place stay the retriever's."""
        response, res, n = sink["response"], sink["result"], sink["num_nodes"]
        meta = result_metadata(res, source_name(*self._source[:2]), n)
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
        return self._finish(sink) if "result" in sink else response

    async def asynthesize(self, query: Any, nodes: list, additional_source_nodes: Optional[Sequence] = None, **kwargs: Any):
        sink = self._start(nodes, kwargs)
        sink["response"] = response = await super().asynthesize(query, nodes, additional_source_nodes, **kwargs)
        return self._finish(sink) if "result" in sink else response
