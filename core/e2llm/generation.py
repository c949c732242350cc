"""Answering: prepare (chunk, fit the window, encode), splice, and call the decoder's generate.

Mixed into :class:`e2llm.model.E2LLM`; kept apart so the model file stays about building.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional, Sequence

import torch
from transformers.generation.streamers import BaseStreamer

from .chunking import Chunk
from .decoding import DecodeSettings, InferenceCopies, decode
from .errors import ContextTooLongError, InputError
from .prompts import PromptLayout
from .softprompts import Context, SoftPrompts
from .splice import Spliced, splice

Overflow = Literal["error", "truncate"]


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int  # ordinary tokens the decoder read (instruction, question, raw passages)
    soft_tokens: int  # soft-prompt vectors the decoder read
    new_tokens: int
    context_tokens: int  # encoder tokens of the document(s) that were compressed
    # The chunks read, in document order: as soft prompts, or (raw_only) as raw text alone. Every
    # index in raw_chunks points into this list, in every reading mode.
    chunks: list[Chunk] = field(default_factory=list)
    dropped_chunks: int = 0  # left out under overflow="truncate"
    raw_only: bool = False  # hybrid outside soft_prompts_min/max_tokens: the raw chunks alone, no soft prompts
    raw_chunks: list[int] = field(default_factory=list)  # indices into `chunks` of those also (raw_only: only) read raw
    chunk_scores: Optional[list[float]] = None  # attention share of each of `chunks` (soft tokens; raw_only: raw text)
    citations: Optional[list["Citation"]] = None  # soft chunks and raw passages, by share of the answer's attention
    finish_reason: str = "length"  # "stop" (end of turn or stop string) or "length"


@dataclass
class Citation:
    """A span of the document(s) the answer drew on, and how much: ``score`` is its share of the
    attention the answer paid to all document positions (soft tokens and raw passages together;
    the scores of one answer sum to 1). A chunk read both compressed and raw gets two entries."""

    kind: Literal["soft", "raw"]  # read as soft tokens, or pasted as raw text (hybrid reading)
    score: float
    chunk: Optional[Chunk] = None  # source chunk (doc_index, character offsets); None for caller raw_texts
    passage: int = -1  # raw: index into the raw passages read (caller raw_texts first, then raw chunks)

    @property
    def doc_index(self) -> Optional[int]:
        return None if self.chunk is None else self.chunk.doc_index


@dataclass
class _Prepared:
    pieces: list
    result: GenerationResult  # text filled in after decoding
    question: str = ""
    raw_passages: list[str] = field(default_factory=list)  # raw texts read, in prompt order
    raw_sources: list[Optional[Chunk]] = field(default_factory=list)  # the chunk each came from (None: caller's text)


class _TokenQueue(BaseStreamer):
    """Receives new token ids from generate() (batch of one) and hands them to a consumer."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate() first pushes the prompt ids (empty with inputs_embeds)
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self):
        self.queue.put(None)


class TextStream:
    """Iterate for text pieces as they are generated; ``.result`` is complete afterwards."""

    def __init__(self, engine, prepared: _Prepared, spliced: Spliced, gen_kwargs: dict, stop: Sequence[str],
                 citations: bool = False):
        self.engine, self.result, self._stop = engine, prepared.result, list(stop or ())
        self._prepared, self._citations = prepared, citations
        self._streamer = _TokenQueue()
        self._error: BaseException | None = None
        self.first_token_time: float | None = None
        self.start_time = time.perf_counter()

        def run():
            try:
                engine._run_generate(spliced, gen_kwargs, streamer=self._streamer)
            except BaseException as e:  # surfaced to the consumer
                self._error = e
                self._streamer.end()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        text = _IncrementalText(self.engine.decoder_tokenizer, self.engine._stop_token_ids(), self._stop)
        while True:
            item = self._streamer.queue.get()
            if item is None:
                break
            if self.first_token_time is None:
                self.first_token_time = time.perf_counter()
            piece = text.feed(item)
            if piece:
                yield piece
        self._thread.join()
        if self._error is not None:
            raise self._error
        piece = text.close()
        if piece:
            yield piece
        self.result.text, self.result.new_tokens = text.text, len(text.ids)
        if text.finish_reason:
            self.result.finish_reason = text.finish_reason
        if self._citations:  # needs the whole answer: computed once the stream has ended
            self.result.chunk_scores = self.engine._citations(self._prepared)


class _IncrementalText:
    """Token ids in, final text out: what the stream shows is never taken back.

    Held back until more ids arrive: trailing U+FFFD (a character whose bytes are still coming)
    and the last len(longest stop string) - 1 characters (a stop string may be forming there).
    """

    def __init__(self, tokenizer, eos_ids: set[int], stop: Sequence[str]):
        self.tokenizer, self.eos_ids, self.stop = tokenizer, eos_ids, [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text, self.emitted = "", 0  # decoded text so far; characters of it already shown
        self.finish_reason: str | None = None  # "stop" once an end-of-turn token or stop string is seen

    def feed(self, ids: Sequence[int]) -> str:
        if self.finish_reason:
            return ""
        for t in ids:
            if t in self.eos_ids:
                self.finish_reason = "stop"
                break
            self.ids.append(t)
        self._decode(final=self.finish_reason is not None)
        safe = len(self.text) if self.finish_reason else len(self.text.rstrip("\ufffd")) - self.hold
        return self._emit(safe)

    def close(self) -> str:
        self._decode(final=True)
        return self._emit(len(self.text))

    def _decode(self, final: bool) -> None:
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # a trailing U+FFFD may still turn into a character: no stop string matches it before the end
        cut = _first_stop(self.text if final else self.text.rstrip("\ufffd"), self.stop)
        if cut is not None:
            self.text, self.finish_reason = self.text[:cut], "stop"

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


class GenerationMixin:
    # Decode with a merged copy of the decoder, in bf16 where the hardware has bf16 units
    # (docs/speed.md: greedy text agreement with float32); False decodes the float32 decoder itself.
    fast_decode: bool = True
    # Greedy answers (one question) check up to this many tokens copied from the prompt a decoder
    # pass (decoding.PromptLookup); 0 decodes one token a pass. docs/speed.md has the measurement.
    draft_tokens: int = 8

    # ---------------------------------------------------------------- preparing one prompt
    def _prepare(self, question: str, context: Context, *, raw_texts: Sequence[str] = (), raw_top_n: int | None = None,
                 max_new_tokens: int, overflow: Overflow = "error") -> _Prepared:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty; pass the question to answer")
        if overflow not in ("error", "truncate"):
            raise InputError(f"overflow must be 'error' or 'truncate', got {overflow!r}")
        raw_top_n = self.config.raw_top_n if raw_top_n is None else raw_top_n
        if raw_top_n < 0:
            raise InputError(f"raw_top_n must be >= 0, got {raw_top_n}",
                             cli=f"--raw-top-n must be >= 0, got {raw_top_n}")
        if context is None:
            chunks: list[Chunk] = []
        elif isinstance(context, SoftPrompts):
            chunks = context.chunks
        else:
            chunks = self.chunk(context)
        k, window = self.config.adapter.tokens_per_chunk, self.window_tokens
        if overflow == "error":
            self._check_size(question, chunks, max_new_tokens)  # before the ranking pass encodes every chunk

        raw_idx = self.raw_chunk_indices(question, chunks, raw_top_n)
        raw = [str(t) for t in raw_texts] + [chunks[i].text for i in raw_idx]
        ids = self.layout.ids(question, raw)
        num_groups = len({c.doc_index for c in chunks})
        fixed = PromptLayout.num_tokens(ids, num_groups) + max_new_tokens
        if fixed + (k if chunks else 0) > window:
            what = (f"the prompt takes {fixed - max_new_tokens} tokens (question{', raw passages' if raw else ''} and "
                    f"instruction) + {max_new_tokens} new tokens, beyond the decoder window of {window} tokens; shorten the question")
            raise ContextTooLongError(f"{what}{', lower raw_top_n' if raw_top_n else ''} or lower max_new_tokens",
                                      cli=f"{what}{', lower --raw-top-n' if raw_top_n else ''} or lower --max-new-tokens")
        fit = (window - fixed) // k
        keep = list(range(len(chunks)))
        # outside the lengths where soft prompts earn answers (docs/defaults.md): the raw chunks alone
        raw_only = bool(raw_idx) and self.config.soft_prompts_skipped(sum(c.num_tokens for c in chunks))
        if raw_only:
            keep = []  # hybrid beyond the limit: the raw chunks alone (and no encoder pass for a text context)
        elif len(chunks) > fit:
            if overflow == "error":
                context_tokens = sum(c.num_tokens for c in chunks)
                need = math.ceil(context_tokens / max(1, fit))
                what = (f"the document needs {len(chunks)} chunks ({len(chunks) * k} soft tokens) but the decoder window "
                        f"({window} tokens) fits {fit} chunks with this prompt")
                raise ContextTooLongError(
                    f"{what}; use chunks of about {need} tokens (chunking.tokens_per_chunk is "
                    f"{self.config.chunking.tokens_per_chunk}), fewer soft tokens per chunk, a smaller max_new_tokens, "
                    f"or overflow='truncate' to keep the {fit} chunks most similar to the question",
                    cli=f"{what}; pass --overflow truncate to keep the {fit} chunks most similar to the question, "
                        f"or lower --raw-top-n or --max-new-tokens")
            if len(raw_idx) > fit:  # the raw passages left less room than they number: they could not all be kept
                raise ContextTooLongError(
                    f"the {len(raw_idx)} raw passages leave room for {fit} chunks in the decoder window; lower raw_top_n",
                    cli=f"the {len(raw_idx)} raw passages leave room for {fit} chunks in the decoder window; lower --raw-top-n")
            keep = sorted(self.rank_chunks(question, chunks)[:fit])  # cached: cheap after raw_chunk_indices

        if isinstance(context, SoftPrompts):
            sp = context if len(keep) == len(chunks) else context.select(keep)
        else:
            kept = [chunks[i] for i in keep]
            sp = SoftPrompts(self.encode_chunks(kept), kept)
        # result.chunks: what was read (raw-only: the raw chunks); raw_chunks index into it, whatever the mode
        read = raw_idx if raw_only else keep
        position = {i: j for j, i in enumerate(read)}  # raw_idx is a subset of keep (checked above when truncating)
        result = GenerationResult(text="", prompt_tokens=fixed - max_new_tokens, soft_tokens=sp.num_soft_tokens,
                                  new_tokens=0, context_tokens=sum(c.num_tokens for c in chunks),
                                  chunks=[chunks[i] for i in read],
                                  dropped_chunks=0 if raw_only else len(chunks) - len(keep), raw_only=raw_only,
                                  raw_chunks=[position[i] for i in raw_idx])
        return _Prepared(self.layout.pieces(ids, sp.groups()), result, question, raw,
                         [None] * len(raw_texts) + [chunks[i] for i in raw_idx])

    def _check_size(self, question: str, chunks: Sequence[Chunk], max_new_tokens: int) -> None:
        """The documented size limit (README "Limitations"): a context of more chunks than the
        decoder window holds as soft tokens beside the question is an error in every reading mode,
        raised before the ranking pass encodes them all (minutes for millions of tokens)."""
        k, window = self.config.adapter.tokens_per_chunk, self.window_tokens
        room = (window - PromptLayout.num_tokens(self.layout.ids(question, []), 1) - max_new_tokens) // k
        if room <= 0 or len(chunks) <= room:  # room <= 0: the prompt alone overflows, which _prepare reports
            return
        tokens = sum(c.num_tokens for c in chunks)
        what = (f"the document needs {len(chunks)} chunks ({tokens} tokens) but the decoder window ({window} tokens) "
                f"fits {room} chunks (about {room * tokens // len(chunks)} tokens) beside this question as soft tokens")
        need = math.ceil(tokens / room)
        raise ContextTooLongError(
            f"{what}; split the document, use chunks of about {need} tokens (chunking.tokens_per_chunk is "
            f"{self.config.chunking.tokens_per_chunk}), or pass overflow='truncate' to read only the chunks most similar "
            f"to the question",
            cli=f"{what}; split the document, or pass --overflow truncate to read only the chunks most similar to the question")

    # ---------------------------------------------------------------- decoding
    def _stop_token_ids(self) -> set[int]:
        eos = self._decoder_base.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {e for e in eos + [self.decoder_tokenizer.eos_token_id] if e is not None}

    def _gen_kwargs(self, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                    stop: Sequence[str] | None) -> DecodeSettings:
        return DecodeSettings(max_new_tokens=max_new_tokens, eos_token_ids=sorted(self._stop_token_ids()),
                              pad_token_id=self.decoder_tokenizer.pad_token_id, do_sample=do_sample,
                              temperature=temperature, top_p=top_p, stop_strings=list(stop or ()),
                              tokenizer=self.decoder_tokenizer, draft_tokens=self.draft_tokens)

    def _inference_decoder(self) -> torch.nn.Module:
        """The module decode() runs: with fast_decode a merged (bf16 where the hardware has bf16
        units) copy, rebuilt when the decoder's weights change or its LoRA is switched off;
        without, the decoder itself (exactly the float32 answers of transformers' generate)."""
        if not self.fast_decode:
            return self._decoder_base
        copies = getattr(self, "_inference_copies", None)
        if copies is None:
            copies = self._inference_copies = InferenceCopies()
        return copies.get(self.decoder, fast=True)

    @torch.no_grad()
    def _run_generate(self, spliced: Spliced, settings: DecodeSettings, streamer=None) -> torch.Tensor:
        with self.lock:  # the LoRA switch (and so which copy runs) is global state
            return decode(self._inference_decoder(), spliced.inputs_embeds, spliced.attention_mask, settings,
                          streamer=streamer, prompt_ids=spliced.token_ids)  # (B, new_tokens)

    def _splice(self, prepared: Sequence[_Prepared]) -> Spliced:
        return splice([p.pieces for p in prepared], self._decoder_base.get_input_embeddings(), pad_left=True)

    def _decode_batch(self, out: torch.Tensor, results: Sequence[GenerationResult], stop: Sequence[str] | None) -> None:
        eos = self._stop_token_ids()
        for row, res in zip(out.tolist(), results):
            text = _IncrementalText(self.decoder_tokenizer, eos, stop or ())
            text.feed(row)
            text.close()
            res.text, res.new_tokens = text.text, len(text.ids)
            if text.finish_reason:
                res.finish_reason = text.finish_reason

    # ---------------------------------------------------------------- public API
    def _max_new_tokens(self, max_new_tokens: int | None) -> int:
        """None: the checkpoint's prompt.max_new_tokens; anything below 1 is an error, not the default."""
        if max_new_tokens is None:
            return self.config.prompt.max_new_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}; "
                             f"pass None for the checkpoint's default ({self.config.prompt.max_new_tokens})")
        return max_new_tokens

    def generate(self, question: str, context: Context = None, *, raw_texts: Sequence[str] = (), raw_top_n: int | None = None,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 stop: Sequence[str] | None = None, overflow: Overflow = "error", return_citations: bool = False,
                 return_result: bool = False):
        """Answer `question` from `context` (a text, a list of texts — one chunk group each — or
        SoftPrompts from :meth:`encode`). Returns the text, or a GenerationResult if asked."""
        return self.generate_batch([question], [context], raw_texts=[raw_texts], raw_top_n=raw_top_n, max_new_tokens=max_new_tokens,
                                   do_sample=do_sample, temperature=temperature, top_p=top_p, stop=stop, overflow=overflow,
                                   return_citations=return_citations, return_result=return_result)[0]

    def generate_batch(self, questions: Sequence[str], contexts: Sequence[Context], *, raw_texts: Sequence[Sequence[str]] | None = None,
                       raw_top_n: int | None = None, max_new_tokens: int | None = None, do_sample: bool = False,
                       temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] | None = None,
                       overflow: Overflow = "error", return_citations: bool = False, return_result: bool = False) -> list:
        """Several questions, each over its own context, in one left-padded forward pass."""
        if isinstance(questions, str) or len(questions) != len(contexts):
            raise InputError(f"generate_batch needs one context per question ({len(questions)} questions, {len(contexts)} contexts)")
        if raw_texts is not None and (isinstance(raw_texts, str) or len(raw_texts) != len(questions)):
            raise InputError(f"generate_batch needs one raw_texts list per question ({len(questions)} questions, "
                             f"{'a string' if isinstance(raw_texts, str) else len(raw_texts)} raw_texts lists); pass [] for none")
        if not questions:
            return []
        raw_texts = raw_texts or [()] * len(questions)
        max_new = self._max_new_tokens(max_new_tokens)
        prepared = [self._prepare(q, c, raw_texts=r, raw_top_n=raw_top_n, max_new_tokens=max_new, overflow=overflow)
                    for q, c, r in zip(questions, contexts, raw_texts)]
        spliced = self._splice(prepared)
        out = self._run_generate(spliced, self._gen_kwargs(max_new, do_sample, temperature, top_p, stop))
        results = [p.result for p in prepared]
        self._decode_batch(out, results, stop)
        if return_citations:
            for p in prepared:
                p.result.chunk_scores = self._citations(p)
        return results if return_result else [r.text for r in results]

    def stream(self, question: str, context: Context = None, *, raw_texts: Sequence[str] = (), raw_top_n: int | None = None,
               max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               stop: Sequence[str] | None = None, overflow: Overflow = "error", return_citations: bool = False) -> TextStream:
        """Text pieces as they are generated; the stream's ``.result`` is complete once it ends
        (with ``chunk_scores`` when return_citations is set)."""
        max_new = self._max_new_tokens(max_new_tokens)
        prepared = self._prepare(question, context, raw_texts=raw_texts, raw_top_n=raw_top_n, max_new_tokens=max_new, overflow=overflow)
        return TextStream(self, prepared, self._splice([prepared]), self._gen_kwargs(max_new, do_sample, temperature, top_p, stop),
                          stop or (), citations=return_citations)

    @torch.no_grad()
    def _citations(self, prepared: _Prepared) -> list[float]:
        """Share of the answer's attention (all layers and heads) that went to each chunk's soft
        tokens, returned as ``chunk_scores``; also fills ``result.citations`` with the soft chunks
        and raw passages together. Only the answer's query rows are ever computed (citations.py)."""
        from .citations import answer_attention

        res = prepared.result
        if not res.chunks and not prepared.raw_passages:
            res.citations = []
            return []
        base = self._decoder_base
        spliced = self._splice([prepared])  # one row: no padding
        answer_ids = self.decoder_tokenizer(res.text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        embeds = torch.cat([spliced.inputs_embeds[0], base.get_input_embeddings()(answer_ids.to(self.device))])[None]
        prompt_len = spliced.inputs_embeds.shape[1]
        rows = slice(prompt_len - 1, max(prompt_len, embeds.shape[1] - 1))  # positions that predicted the answer
        with self.lock:
            mass = answer_attention(base, embeds, rows)[:prompt_len].cpu()  # (T_prompt,)

        per_chunk = torch.zeros(0)
        if res.soft_tokens:
            per_soft = mass[spliced.soft_mask[0].cpu()]  # (N * k,) in chunk order
            per_chunk = per_soft.view(len(res.chunks), -1).sum(-1)
        suffix_start = prompt_len - len(prepared.pieces[-1].ids)
        raw_mass = [float(mass[suffix_start + a: suffix_start + b].sum()) for a, b in self._raw_token_spans(prepared)]
        total = max(float(per_chunk.sum()) + sum(raw_mass), 1e-12)
        res.citations = sorted([Citation("soft", float(m) / total, c) for m, c in zip(per_chunk, res.chunks)]
                               + [Citation("raw", m / total, src, i) for i, (m, src) in enumerate(zip(raw_mass, prepared.raw_sources))],
                               key=lambda c: -c.score)
        if res.raw_only:  # the chunks were read as raw text: their passages' shares, in the order of res.chunks
            per_chunk = torch.tensor(raw_mass[len(raw_mass) - len(res.chunks):])
        if not res.chunks:
            return []
        return (per_chunk / per_chunk.sum().clamp(min=1e-12)).tolist()

    def _raw_token_spans(self, prepared: _Prepared) -> list[tuple[int, int]]:
        """[start, end) token indices of each raw passage within the prompt's suffix tokens."""
        if not prepared.raw_passages:
            return []
        _, suffix = self.layout.render(prepared.question, prepared.raw_passages)
        enc = self.decoder_tokenizer(suffix, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] != list(prepared.pieces[-1].ids):
            raise RuntimeError("the prompt suffix re-tokenizes differently; raw passages cannot be located")
        offsets, spans = enc["offset_mapping"], []
        cursor = suffix.index(self.config.prompt.raw_passages_header) + len(self.config.prompt.raw_passages_header)
        for passage in prepared.raw_passages:
            start = suffix.index(passage.strip(), cursor)
            cursor = start + len(passage.strip())
            tokens = [t for t, (a, b) in enumerate(offsets) if a < cursor and b > start]  # overlap the passage
            spans.append((tokens[0], tokens[-1] + 1) if tokens else (0, 0))
        return spans
