"""The systems compared, all on the same decoder and the same questions.

- ``e2llm``: every chunk compressed into k soft tokens, nothing raw (raw_top_n=0).
- ``e2llm_hybrid``: the same, plus the raw text of the ``raw_top_n`` chunks the retriever
  ranks highest (the checkpoint's own ``raw_top_n``; 2 where it has none), as the checkpoint
  reads by default: outside its ``soft_prompts_min_tokens``..``soft_prompts_max_tokens`` that is
  the raw chunks alone.
- ``e2llm_raw`` (control): hybrid's raw chunks alone, no soft prompts, same tuned decoder:
  what the soft prompts add to hybrid reading.
- ``e2llm_swapped`` (control): *another* document's soft prompts (the next item of the same
  task and length) + this document's raw chunks: whether the soft prompts carry this
  document or act as a learned prompt (as ``scripts/hybrid_controls.py`` measured).
- ``rag``: no soft tokens; the chunks the retriever ranks highest, as raw text, accumulated
  in rank order until their decoder tokens reach the soft tokens e2llm reads for the same
  item (at least one chunk), then put back in document order. Same chunking, same
  retriever (:meth:`E2LLM.rank_chunks`: the encoder with its LoRA off).
- ``rag_top_n`` (control): hybrid's raw chunks alone with the plain decoder (its LoRA off unless
  ``baseline_lora``): plain RAG top-n with the same retriever and the same decoder.
- ``rag_hybrid_budget``: the same, with the budget of ``e2llm_hybrid`` (its soft tokens plus
  its ``raw_top_n`` raw chunks): hybrid's raw chunks, then more raw chunks in place of the
  compressed rest of the document. It asks whether compressing everything is worth more
  than the same decoder tokens spent on raw text.
- ``full``: the whole document as raw text, only where it fits the decoder window; else
  the result is ``n/a (exceeds window)``, never a truncated document.
- ``none``: the question alone: the floor every system should beat.

Decoder LoRA: the e2llm systems use the engine as is; ``rag``, ``full`` and ``none`` read
plain text, by default with the decoder's LoRA switched off (the instruct model as
released), or with it on (``baseline_lora=True``, ``--baseline-lora on``).

Latency: chunk encodings are measured once per item from an empty cache
(:func:`prepare_item`) and charged to the systems that need them, so each system's latency
is what it costs from scratch: e2llm = chunk + encode + answer; hybrid = chunk + encode +
retrieval index + answer; rag = chunk + retrieval index + answer; full, none = answer.
Peak memory is the largest of those stages' peaks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..chunking import Chunk
from ..errors import ContextTooLongError
from ..lora_switch import decoder_lora
from ..meters import PeakMemory
from ..prompts import PromptLayout
from ..softprompts import SoftPrompts
from .grid import CONTROL_SYSTEMS, DEFAULT_SYSTEMS, SYSTEMS  # noqa: F401  (public names of this module too)

RAG_SYSTEMS = frozenset({"rag", "rag_hybrid_budget"})
E2LLM_SYSTEMS = frozenset({"e2llm", "e2llm_hybrid", "e2llm_raw", "e2llm_swapped"})  # the engine as is (LoRA on)
PLAIN_TEXT_SYSTEMS = RAG_SYSTEMS | {"rag_top_n", "full", "none"}  # decoder LoRA per baseline_lora
NEEDS_SOFT = frozenset({"e2llm", "e2llm_hybrid"})
NEEDS_OTHER_SOFT = frozenset({"e2llm_swapped"})  # another document's soft prompts
TOP_N_SYSTEMS = frozenset({"e2llm_hybrid", "e2llm_raw", "e2llm_swapped", "rag_top_n"})  # read hybrid's raw chunks
NEEDS_RETRIEVAL = RAG_SYSTEMS | TOP_N_SYSTEMS
NEEDS_CHUNKS = NEEDS_SOFT | NEEDS_RETRIEVAL
USES_RAW_TOP_N = TOP_N_SYSTEMS | {"rag_hybrid_budget"}  # settings.raw_top_n shapes their answers
NA_WINDOW = "n/a (exceeds window)"


@dataclass(frozen=True)
class SystemSettings:
    raw_top_n: Optional[int] = None  # None: each checkpoint's own raw_top_n (hybrid_raw_top_n)
    baseline_lora: bool = False
    max_new_tokens: int = 32


@dataclass
class Prepared:
    """One item read by one engine, with what each stage cost from an empty cache."""

    chunks: list[Chunk]
    soft: Optional[SoftPrompts] = None
    other_soft: Optional[SoftPrompts] = None  # another document's (e2llm_swapped)
    chunk_s: float = 0.0
    encode_s: float = 0.0
    retrieve_s: float = 0.0
    chunk_mem_mb: float = 0.0
    encode_mem_mb: float = 0.0
    retrieve_mem_mb: float = 0.0

    def charged(self, system: str) -> tuple[float, float]:
        """(seconds, peak MB) of the shared stages that ``system`` needs."""
        seconds, mem = 0.0, 0.0
        if system in NEEDS_CHUNKS:
            seconds, mem = self.chunk_s, self.chunk_mem_mb
        if system in NEEDS_SOFT or system in NEEDS_OTHER_SOFT:  # encoding the other document costs about the same
            seconds, mem = seconds + self.encode_s, max(mem, self.encode_mem_mb)
        if system in NEEDS_RETRIEVAL:
            seconds, mem = seconds + self.retrieve_s, max(mem, self.retrieve_mem_mb)
        return seconds, mem


@dataclass
class Outcome:
    status: str  # "ok" or NA_WINDOW
    text: str = ""
    prompt_tokens: int = 0  # ordinary tokens read (instruction, question, raw passages)
    soft_tokens: int = 0
    new_tokens: int = 0
    raw_chunks: list[int] = field(default_factory=list)  # indices into the document's chunks also read raw (hybrid, rag)
    dropped_chunks: int = 0
    finish_reason: str = ""
    call_s: float = 0.0  # the answering call alone
    latency_s: float = 0.0  # call_s + the shared stages this system needs
    peak_mem_mb: float = 0.0
    rag_budget_tokens: Optional[int] = None

    @property
    def decoder_tokens(self) -> int:
        return self.prompt_tokens + self.soft_tokens


def prepare_item(engine, context: str, systems: Sequence[str], other_context: Optional[str] = None) -> Prepared:
    """Chunk, encode and index ``context`` as the given systems need, timing each stage
    from an empty cache; later calls hit the cache (their cost is charged from here).
    ``other_context``: the document whose soft prompts ``e2llm_swapped`` reads (untimed)."""
    engine.cache.clear()
    prepared = Prepared(chunks=[])
    if not set(systems) & NEEDS_CHUNKS:
        return prepared
    with PeakMemory(engine.device) as mem:
        start = time.perf_counter()
        prepared.chunks = engine.chunk(context)
        prepared.chunk_s = time.perf_counter() - start
    prepared.chunk_mem_mb = mem.peak_mb
    if set(systems) & NEEDS_SOFT:
        with PeakMemory(engine.device) as mem:
            start = time.perf_counter()
            prepared.soft = SoftPrompts(engine.encode_chunks(prepared.chunks), prepared.chunks)
            prepared.encode_s = time.perf_counter() - start
        prepared.encode_mem_mb = mem.peak_mb
    if set(systems) & NEEDS_RETRIEVAL:
        with PeakMemory(engine.device) as mem:
            start = time.perf_counter()
            engine.retrieval_vectors([c.text for c in prepared.chunks])
            prepared.retrieve_s = time.perf_counter() - start
        prepared.retrieve_mem_mb = mem.peak_mb
    if set(systems) & NEEDS_OTHER_SOFT and other_context is not None:
        other_chunks = engine.chunk(other_context)
        prepared.other_soft = SoftPrompts(engine.encode_chunks(other_chunks), other_chunks)
    return prepared


def e2llm_soft_tokens(engine, question: str, num_chunks: int, max_new_tokens: int) -> int:
    """Soft tokens ``e2llm`` reads for this question: every chunk's k, or as many chunks as
    the window holds (it runs with overflow='truncate'), as the engine computes it."""
    k = engine.config.adapter.tokens_per_chunk
    fixed = PromptLayout.num_tokens(engine.layout.ids(question), 1) + max_new_tokens
    return min(num_chunks, max(0, (engine.window_tokens - fixed) // k)) * k


def select_rag_chunks(order: Sequence[int], count_tokens: Callable[[int], int], budget_tokens: int) -> tuple[list[int], int]:
    """Chunks in rank order until their decoder tokens reach ``budget_tokens`` (at least one
    chunk, so the last may go past it); returns (indices in document order, tokens)."""
    picked, total = [], 0
    for index in order:
        if picked and total >= budget_tokens:
            break
        picked.append(index)
        total += count_tokens(index)
    return sorted(picked), total


def hybrid_raw_top_n(engine, settings: SystemSettings) -> int:
    """Raw chunks the hybrid system reads: the setting, else what the checkpoint ships with
    (its config's raw_top_n), else 2 for a checkpoint that reads none raw."""
    if settings.raw_top_n is not None:
        return settings.raw_top_n
    return engine.config.raw_top_n or 2


def run_system(engine, system: str, question: str, context: str, prepared: Prepared,
               settings: SystemSettings, stop: Sequence[str] = ()) -> Outcome:
    """Answer ``question`` about ``context`` with ``system`` (greedy); n/a when it cannot fit."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}")
    if system in NEEDS_OTHER_SOFT and prepared.other_soft is None:
        raise ValueError("e2llm_swapped needs another document's soft prompts: prepare_item(..., other_context=...)")
    kwargs = dict(max_new_tokens=settings.max_new_tokens, stop=list(stop) or None, return_result=True)
    budget, picked = None, None  # picked: indices into prepared.chunks read raw, where this function picks them
    lora_on = settings.baseline_lora or system in E2LLM_SYSTEMS
    try:
        with PeakMemory(engine.device) as mem, decoder_lora(engine, lora_on):
            start = time.perf_counter()
            if system in TOP_N_SYSTEMS - {"e2llm_hybrid"}:  # hybrid's raw chunks, its prompt, other soft prompts
                picked = engine.raw_chunk_indices(question, prepared.chunks, hybrid_raw_top_n(engine, settings))
                soft = prepared.other_soft if system == "e2llm_swapped" else None
                result = engine.generate(question, soft, raw_texts=[prepared.chunks[i].text for i in picked], raw_top_n=0,
                                         overflow="truncate", **kwargs)
            elif system in E2LLM_SYSTEMS:
                raw_top_n = hybrid_raw_top_n(engine, settings) if system == "e2llm_hybrid" else 0
                result = engine.generate(question, prepared.soft, raw_top_n=raw_top_n, overflow="truncate", **kwargs)
            elif system in RAG_SYSTEMS:
                budget = e2llm_soft_tokens(engine, question, len(prepared.chunks), settings.max_new_tokens)
                order = engine.rank_chunks(question, prepared.chunks)
                tok = engine.decoder_tokenizer
                count = lambda i: len(tok(prepared.chunks[i].text, add_special_tokens=False)["input_ids"])  # noqa: E731
                if system == "rag_hybrid_budget":  # + the raw chunks hybrid reads (its top raw_top_n)
                    budget += sum(count(i) for i in order[:hybrid_raw_top_n(engine, settings)])
                picked, _ = select_rag_chunks(order, count, budget)
                result = engine.generate(question, None, raw_texts=[prepared.chunks[i].text for i in picked], **kwargs)
            elif system == "full":
                result = engine.generate(question, None, raw_texts=[context], **kwargs)
            else:
                result = engine.generate(question, None, **kwargs)
            call_s = time.perf_counter() - start
    except ContextTooLongError:
        return Outcome(NA_WINDOW, rag_budget_tokens=budget)
    shared_s, shared_mem = prepared.charged(system)
    if picked is None:  # the engine picked them: result.raw_chunks index into result.chunks, these into the document's
        picked = [prepared.chunks.index(result.chunks[i]) for i in result.raw_chunks]
    return Outcome("ok", result.text, result.prompt_tokens, result.soft_tokens, result.new_tokens,
                   list(picked), result.dropped_chunks, result.finish_reason, call_s,
                   call_s + shared_s, max(mem.peak_mb, shared_mem), budget)
