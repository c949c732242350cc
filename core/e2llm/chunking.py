"""Token-budget chunking with sentence back-off.

The pure core, :func:`chunk_spans`, works on the character spans of tokens, so it needs no
tokenizer and is property-tested with a whitespace "tokenizer". :func:`chunk_text` feeds it
the encoder tokenizer's offsets, so the budget is measured in the encoder's own tokens.

Guarantees (tests/test_chunking.py): chunks are contiguous slices of the source; without
overlap they concatenate back to the source exactly; with overlap each chunk starts at most
``overlap_tokens`` tokens before the previous one ended; no chunk holds more than the budget.
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import Sequence

# Where a chunk may end, best first: after a sentence end or a line break, else after any
# whitespace. The cut goes *after* the whitespace so the next chunk starts on a word.
_SENTENCE_OR_LINE = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offset into its document
    end: int
    doc_index: int = 0  # which document of a multi-document context
    num_tokens: int = 0  # encoder tokens (by the chunker's count)


def _last_boundary(pattern: re.Pattern, text: str, lo: int, hi: int, min_end: int) -> int | None:
    """End of the last match of `pattern` inside text[lo:hi] that ends at or after min_end, or None."""
    best = None
    for m in pattern.finditer(text, lo, hi):
        best = m.end()
    return best if best is not None and best >= min_end else None


def chunk_spans(
    text: str,
    token_spans: Sequence[tuple[int, int]],
    tokens_per_chunk: int,
    overlap_tokens: int = 0,
    min_fill: float = 0.5,
) -> list[tuple[int, int, int]]:
    """Split `text` into (start_char, end_char, num_tokens) pieces of at most `tokens_per_chunk` tokens.

    token_spans: (start, end) character span of each token, in order, as a fast tokenizer's
    offset mapping gives them. A chunk is cut at the last sentence end or line break that
    keeps it within budget, but not before `min_fill` of the budget, so a long sentence
    cannot produce a run of tiny chunks; failing that at a space; failing that mid-word.
    """
    if tokens_per_chunk < 1:
        raise ValueError("tokens_per_chunk must be >= 1")
    if not 0 <= overlap_tokens < tokens_per_chunk:
        raise ValueError("overlap_tokens must be in [0, tokens_per_chunk)")
    n = len(token_spans)
    if n == 0:
        return []
    starts = [s for s, _ in token_spans]
    min_tokens = max(1, math.ceil(tokens_per_chunk * min_fill))
    pieces: list[tuple[int, int, int]] = []
    first, chunk_start = 0, 0  # first token of the chunk; its first character (0 keeps leading space)
    while True:
        stop = first + tokens_per_chunk  # first token that does not fit
        if stop >= n:
            pieces.append((chunk_start, len(text), n - first))
            return pieces
        hard_end = starts[stop]
        floor = max(token_spans[first + min_tokens - 1][1], chunk_start + 1)
        cut = None
        if floor < hard_end:
            cut = _last_boundary(_SENTENCE_OR_LINE, text, chunk_start, hard_end, floor)
            if cut is None:
                cut = _last_boundary(_WHITESPACE, text, chunk_start, hard_end, floor)
        if cut is None or cut <= chunk_start:
            cut = hard_end
        nxt = bisect.bisect_left(starts, cut, lo=first + 1)  # first token starting at/after the cut
        pieces.append((chunk_start, cut, nxt - first))
        if nxt >= n:  # only whitespace left after the cut: it belongs to the last chunk
            pieces[-1] = (chunk_start, len(text), nxt - first)
            return pieces
        if overlap_tokens:
            first = max(nxt - overlap_tokens, first + 1)
            chunk_start = min(starts[first], cut)  # never skip the whitespace before the cut
        else:
            first, chunk_start = nxt, cut


def chunk_text(text: str, tokenizer, tokens_per_chunk: int, overlap_tokens: int = 0, min_fill: float = 0.5,
               doc_index: int = 0) -> list[Chunk]:
    """Chunk one document with a Hugging Face *fast* tokenizer's offsets."""
    return chunk_texts([text], tokenizer, tokens_per_chunk, overlap_tokens, min_fill, [doc_index])[0]


def chunk_texts(texts: Sequence[str], tokenizer, tokens_per_chunk: int, overlap_tokens: int = 0,
                min_fill: float = 0.5, doc_indices: Sequence[int] | None = None) -> list[list[Chunk]]:
    """Chunk many documents; one batched tokenizer call, which the Rust tokenizer runs on all
    cores (tokenizing is most of a chunker's time: a training step chunks dozens of contexts)."""
    if not texts:
        return []
    doc_indices = [0] * len(texts) if doc_indices is None else doc_indices
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for text, offsets, doc_index in zip(texts, enc["offset_mapping"], doc_indices):
        spans = [(int(s), int(e)) for s, e in offsets]
        out.append([Chunk(text[s:e], s, e, doc_index, num_tokens)
                    for s, e, num_tokens in chunk_spans(text, spans, tokens_per_chunk, overlap_tokens, min_fill)])
    return out
