"""What the LangChain and LlamaIndex plugins share: where the engine comes from (a checkpoint,
loaded once per process per checkpoint, device, dtype and quantization, and shared; or a ready engine), how
documents become one request (each document its own chunk group; hybrid reading takes the top
chunks across all of them, as the engine and the evaluation do), and how a GenerationResult
becomes usage numbers and per-document citations.

Nothing here imports torch or a framework at import time; bad input is rejected before the
engine loads.
"""
from __future__ import annotations

import asyncio
import base64
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

LANGCHAIN_PIP = "pip install 'e2llm[langchain]'"
LLAMA_INDEX_PIP = "pip install 'e2llm[llama-index]'"


# ---------------------------------------------------------------- where the engine comes from
_ENGINES: dict[tuple, Any] = {}
_LOADING: dict[tuple, threading.Lock] = {}
_GUARD = threading.Lock()


def checkpoint_name(checkpoint: Any) -> Any:
    """A checkpoint given as a Path (or any os.PathLike) -> its string; anything else unchanged."""
    return os.fspath(checkpoint) if isinstance(checkpoint, os.PathLike) else checkpoint


def _key(checkpoint: str | Path, device: Optional[str] = None, dtype: Optional[str] = None,
         quantization: Optional[str] = None) -> tuple:
    text = str(checkpoint)
    path = Path(text).expanduser()
    return (str(path.resolve()) if text != "default" and path.exists() else text, device, dtype, quantization)


def load_engine(checkpoint: str | Path = "default", *, device: Optional[str] = None, dtype: Optional[str] = None,
                quantization: Optional[str] = None):
    """The engine for `checkpoint` on `device` in `dtype` with the decoder's `quantization`
    (None: from_pretrained's defaults), loaded on first use and shared by every plugin object in
    the process that names the same four (one copy of the weights, one load)."""
    key = _key(checkpoint, device, dtype, quantization)
    with _GUARD:
        if key in _ENGINES:
            return _ENGINES[key]
        lock = _LOADING.setdefault(key, threading.Lock())
    with lock:  # a second thread asking for the same engine waits for the first load
        if key not in _ENGINES:
            from e2llm import E2LLM as E2LLMEngine

            options = {k: v for k, v in (("device", device), ("dtype", dtype), ("quantization", quantization)) if v is not None}
            engine = E2LLMEngine.from_pretrained(checkpoint_name(checkpoint), **options)
            with _GUARD:
                _ENGINES[key] = engine
        return _ENGINES[key]


def check_source(engine: Any, checkpoint: Any, owner: str, device: Optional[str] = None, dtype: Optional[str] = None,
                 quantization: Optional[str] = None) -> None:
    """Validate constructor arguments without loading anything."""
    if engine is not None and checkpoint is not None:
        raise ValueError(f"{owner}: pass either engine= (a loaded e2llm.E2LLM) or checkpoint= (a folder or 'default'), not both")
    if engine is not None and not (hasattr(engine, "generate_batch") and hasattr(engine, "stream")):
        raise TypeError(f"{owner}: engine= must be an e2llm.E2LLM engine, got {type(engine).__name__}")
    if engine is not None and (device is not None or dtype is not None or quantization is not None):
        raise ValueError(f"{owner}: device=, dtype= and quantization= say how to load checkpoint=; an engine= is already "
                         f"loaded (load it with E2LLM.from_pretrained(..., device=..., dtype=..., quantization=...) instead)")


def get_engine(engine: Any, checkpoint: Any, device: Optional[str] = None, dtype: Optional[str] = None,
               quantization: Optional[str] = None):
    if engine is not None:
        return engine
    return load_engine(checkpoint if checkpoint is not None else "default", device=device, dtype=dtype,
                       quantization=quantization)


def source_name(engine: Any, checkpoint: Any) -> str:
    """A name for tracing and metadata; never loads the engine."""
    if engine is not None:
        decoder = getattr(getattr(getattr(engine, "config", None), "decoder", None), "name_or_path", "?")
        return f"e2llm:engine(decoder={decoder})"
    return f"e2llm:{checkpoint if checkpoint is not None else 'default'}"


# ---------------------------------------------------------------- what needs no weights
_TOKENIZERS: dict[str, Any] = {}


def _loaded(engine: Any, checkpoint: Any):
    """The engine given, or one already loaded for this checkpoint (on any device), else None."""
    if engine is not None:
        return engine
    name = _key(checkpoint_name(checkpoint) if checkpoint is not None else "default")[0]
    with _GUARD:
        return next((e for k, e in _ENGINES.items() if k[0] == name), None)


def checkpoint_config(checkpoint: Any):
    """The checkpoint's E2LLMConfig from its config.json alone ("default": the shipped one)."""
    from e2llm import defaults
    from e2llm.checkpoint import read_config

    name = checkpoint_name(checkpoint) if checkpoint is not None else "default"
    return read_config(defaults.shipped_checkpoint() if str(name) == "default" else Path(name))


def decoder_tokenizer(engine: Any, checkpoint: Any):
    """The decoder's own tokenizer: the loaded engine's, else the tokenizer files alone (no
    weights, offline; the default decoder is converted from its GGUF file once per machine)."""
    loaded = _loaded(engine, checkpoint)
    if loaded is not None:
        return loaded.decoder_tokenizer
    key = _key(checkpoint_name(checkpoint) if checkpoint is not None else "default")[0]
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from e2llm import defaults

        cfg = checkpoint_config(checkpoint).decoder
        tokenizer = AutoTokenizer.from_pretrained(defaults.resolve_decoder(cfg.name_or_path), trust_remote_code=cfg.trust_remote_code)
        with _GUARD:
            _TOKENIZERS.setdefault(key, tokenizer)
    return _TOKENIZERS[key]


def model_limits(engine: Any, checkpoint: Any) -> tuple[int, int]:
    """(decoder window, default new tokens) as the engine reports them; from the config files
    alone while no engine is loaded, so a framework asking for metadata loads no weights."""
    loaded = _loaded(engine, checkpoint)
    if loaded is not None:
        return loaded.window_tokens, loaded.config.prompt.max_new_tokens
    cfg = checkpoint_config(checkpoint)
    window = cfg.decoder.max_window_tokens
    if window is None:  # as E2LLM.window_tokens: the decoder's own limit
        from transformers import AutoConfig

        from e2llm import defaults

        decoder = AutoConfig.from_pretrained(defaults.resolve_decoder(cfg.decoder.name_or_path),
                                             trust_remote_code=cfg.decoder.trust_remote_code)
        window = int(getattr(decoder, "max_position_embeddings", 2048))
    return window, cfg.prompt.max_new_tokens


def embed(engine: Any, texts: Sequence[str]) -> list[list[float]]:
    """Unit vectors as hybrid reading ranks chunks against a question (engine.ranking_vectors),
    so the retriever and the reader agree on what is relevant. The encoder reads one chunk's
    tokens at a time (64 in the shipped checkpoint), so a longer text is the normalised mean of
    its chunks' vectors, not its first chunk's alone."""
    texts = list(texts)
    if not texts:
        return []
    filled = [i for i, t in enumerate(texts) if t.strip()]  # chunking refuses blank text; embed it as it is
    groups: list[list[str]] = [[t] for t in texts]
    for i, chunks in zip(filled, engine.chunk_many([texts[i] for i in filled]) if filled else []):
        groups[i] = [c.text for c in chunks] or [texts[i]]
    vectors = engine.ranking_vectors([t for g in groups for t in g])
    out, at = [], 0
    for group in groups:
        mean = vectors[at:at + len(group)].mean(0)
        at += len(group)
        out.append((mean / mean.norm().clamp_min(1e-12)).tolist())
    return out


# ---------------------------------------------------------------- one request
@dataclass
class Request:
    question: str
    context: Any  # str | list[str] | SoftPrompts | None, as the engine takes it
    raw_top_n: Optional[int] = None  # hybrid reading: the n chunks most similar to the question; None: the checkpoint's
    num_documents: int = 0


def split_prompt(prompt: str, separator: Optional[str]) -> tuple[str, Optional[str]]:
    """Context inside the prompt: everything before the last `separator` is the document, the
    rest the question. No separator (the default): the whole prompt is the question."""
    if separator and separator in prompt:
        context, question = prompt.rsplit(separator, 1)
        if context.strip() and question.strip():
            return question.strip(), context
    return prompt, None


def make_request(question: str, *, texts: Optional[Sequence[str]] = None, context: Any = None,
                 raw_top_n: Optional[int] = None) -> Request:
    """`texts`: documents, each its own chunk group. `context`: as the engine takes it. Hybrid
    reading (`raw_top_n`) takes the chunks most similar to the question across every document.
    Checked here, before any model loads: empty or blank documents, a negative raw_top_n."""
    from e2llm.errors import InputError, check_documents

    if raw_top_n is not None and (not isinstance(raw_top_n, int) or raw_top_n < 0):
        raise InputError(f"raw_top_n must be a whole number >= 0 (0: compressed only), got {raw_top_n!r}")
    if texts is not None:
        texts = list(texts)
        if not texts:
            raise InputError("no documents to read: the document list is empty (did the retriever find nothing?); "
                             "pass at least one non-empty document")
        check_documents(texts)
        return Request(question, texts, raw_top_n, len(texts))
    if isinstance(context, str) or (isinstance(context, (list, tuple)) and context):
        check_documents([context] if isinstance(context, str) else list(context))
    return Request(question, context, raw_top_n, 0)


# ---------------------------------------------------------------- results
def document_citations(result, num_documents: int = 0) -> Optional[list[dict]]:
    """Citation score per document: the chunk scores (share of the answer's attention) summed
    over each document's chunks; every document listed, in document order."""
    if result.chunk_scores is None:
        return None
    totals: dict[int, float] = {}
    for chunk, score in zip(result.chunks, result.chunk_scores):
        totals[chunk.doc_index] = totals.get(chunk.doc_index, 0.0) + float(score)
    count = max([num_documents, *(i + 1 for i in totals)])
    return [{"document_index": i, "score": totals.get(i, 0.0)} for i in range(count)]


def usage(result) -> dict[str, int]:
    """Input tokens the decoder read = ordinary prompt tokens + soft tokens."""
    read = result.prompt_tokens + result.soft_tokens
    return {"input_tokens": read, "output_tokens": result.new_tokens, "total_tokens": read + result.new_tokens,
            "prompt_tokens": result.prompt_tokens, "soft_tokens": result.soft_tokens,
            "context_tokens": result.context_tokens}


def result_metadata(result, model_name: str, num_documents: int = 0) -> dict[str, Any]:
    meta = {"model_name": model_name, "finish_reason": result.finish_reason, **usage(result),
            "chunks_read": len(result.chunks), "dropped_chunks": result.dropped_chunks,
            "raw_chunks_read": len(result.raw_chunks), "raw_only": result.raw_only}
    citations = document_citations(result, num_documents)
    if citations is not None:
        meta["citations"] = citations
    return meta


def usage_metadata(result_or_metadata) -> dict[str, int]:
    """LangChain's UsageMetadata, from a GenerationResult or from result_metadata()."""
    u = result_or_metadata if isinstance(result_or_metadata, dict) else usage(result_or_metadata)
    return {k: u[k] for k in ("input_tokens", "output_tokens", "total_tokens")}


def generation_kwargs(*, max_new_tokens: Optional[int], temperature: float, top_p: float,
                      stop: Optional[Sequence[str]], overflow: str, limit_name: str = "max_new_tokens") -> dict[str, Any]:
    """Plugin settings -> engine keyword arguments; temperature 0 is greedy decoding.
    `limit_name` is what the framework calls the new-token limit, for the error message."""
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        from e2llm.errors import InputError

        raise InputError(f"{limit_name} must be a whole number >= 1, got {max_new_tokens!r}; "
                         f"leave it unset (None) for the checkpoint's default")
    sample = bool(temperature and temperature > 0)
    return {"max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": float(temperature) if sample else 1.0,
            "top_p": top_p, "stop": list(stop) if stop else None, "overflow": overflow}


# ---------------------------------------------------------------- framework plumbing
_IGNORED_INIT = {"api_key", "timeout", "max_retries", "base_url"}  # standard cloud parameters: meaningless locally
_ROLES = {"system": "System", "human": "User", "user": "User", "ai": "Assistant", "assistant": "Assistant", "tool": "Tool"}


def known_params(owner: str, values: Any, known: Any, own: Any) -> Any:
    """Constructor keywords: a typo fails loudly, cloud-only standard parameters are dropped."""
    if not isinstance(values, dict):
        return values
    values = {k: v for k, v in values.items() if k not in _IGNORED_INIT}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{owner} got unknown parameter(s) {unknown}; e2llm's own are {sorted(own)}")
    return values


def fold_messages(messages: Sequence[Any]) -> tuple[str, list[str]]:
    """Chat messages (``.type``, ``.content``) -> (question, documents). ``text-plain`` content
    blocks are documents; the text is folded into the question (one message: its text; several:
    "Role: text" lines, so a system message is read as part of the question, overriding nothing)."""
    turns, docs = [], []
    for m in messages:
        texts = []
        for block in [m.content] if isinstance(m.content, str) else m.content:
            kind = "text" if isinstance(block, str) else block.get("type")
            if kind == "text":
                texts.append(block if isinstance(block, str) else block.get("text", ""))
            elif kind == "text-plain" and (block.get("text") is not None or block.get("base64") is not None):
                docs.append(block["text"] if block.get("text") is not None else base64.b64decode(block["base64"]).decode("utf-8"))
            else:
                raise ValueError(f"e2llm reads text: 'text' blocks, and documents as 'text-plain' blocks with text or "
                                 f"base64 data; got a {kind!r} block in a {m.type} message")
        text = "\n".join(t for t in texts if t.strip())
        if text:
            turns.append((_ROLES.get(m.type, str(m.type).capitalize()), text))
    if not turns:
        raise ValueError("the messages hold no question: add a message with text")
    return (turns[0][1] if len(turns) == 1 else "\n".join(f"{role}: {text}" for role, text in turns)), docs


async def athread_iter(iterator):
    """Pull a blocking iterator from worker threads, so the event loop stays free."""
    done = object()
    while (item := await asyncio.to_thread(next, iterator, done)) is not done:
        yield item


# ---------------------------------------------------------------- batching concurrent calls
class BatchWhileBusy:
    """Calls that arrive while the engine is answering wait, then run together as one padded
    batch: ``batch()`` on a chat model (LangChain runs a thread per input) or concurrent users
    of one model object take about two engine passes instead of one per call, and a lone call
    never waits. Only calls with the same ``key`` (the same generation options) share a pass."""

    def __init__(self, max_items: int = 32):
        self.max_items = max_items
        self._cv = threading.Condition()
        self._waiting: list[dict] = []
        self._busy = False

    def run(self, key: Any, items: list, run_batch) -> list:
        """``run_batch(items) -> results`` (one per item), for this call's items and those of the
        calls waiting with the same key."""
        mine = {"key": key, "items": items, "out": None, "error": None, "done": False}
        with self._cv:
            self._waiting.append(mine)
            while self._busy and not mine["done"]:
                self._cv.wait()
            if not mine["done"]:  # the engine is free: take every waiting call with this key
                self._busy = True
                group, size = [], 0
                for call in list(self._waiting):
                    if call["key"] == key and (call is mine or size + len(call["items"]) <= self.max_items):
                        group.append(call)
                        size += len(call["items"])
                        self._waiting.remove(call)
        if not mine["done"]:
            try:
                self._answer(group, run_batch)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        if mine["error"] is not None:
            raise mine["error"]
        return mine["out"]

    @staticmethod
    def _answer(group: list[dict], run_batch) -> None:
        try:
            out = run_batch([item for call in group for item in call["items"]])
            start = 0
            for call in group:
                call["out"], start = out[start:start + len(call["items"])], start + len(call["items"])
        except Exception as e:
            if len(group) == 1:
                group[0]["error"] = e
            else:  # one call's bad input must not fail the others: each on its own
                for call in group:
                    try:
                        call["out"] = run_batch(call["items"])
                    except Exception as own:
                        call["error"] = own
        for call in group:
            call["done"] = True
