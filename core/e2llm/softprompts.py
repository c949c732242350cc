"""SoftPrompts: a document read once (its chunk vectors, texts and offsets), reusable."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from .chunking import Chunk


@dataclass
class SoftPrompts:
    """A document (or several) read once: reusable for any number of questions."""

    vectors: torch.Tensor  # (N, k, Dd)
    chunks: list[Chunk]  # N chunks, each with its doc_index and character offsets

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def num_soft_tokens(self) -> int:
        return self.vectors.shape[0] * self.vectors.shape[1]

    @property
    def num_context_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def compression_ratio(self) -> float:
        return self.num_context_tokens / max(1, self.num_soft_tokens)

    def groups(self) -> list[torch.Tensor]:
        """Soft tokens per document, each (n_i * k, Dd), in document order."""
        out, start = [], 0
        for i in range(len(self.chunks) + 1):
            if i == len(self.chunks) or (i > start and self.chunks[i].doc_index != self.chunks[start].doc_index):
                if i > start:
                    out.append(self.vectors[start:i].flatten(0, 1))
                start = i
        return out

    def select(self, indices: Sequence[int]) -> "SoftPrompts":
        idx = sorted(indices)
        return SoftPrompts(self.vectors[idx], [self.chunks[i] for i in idx])



def spread(vectors: torch.Tensor) -> torch.Tensor:
    """Share of the soft prompts' energy that differs between chunks: mean |v - mean(v)|^2 over
    mean |v|^2, for (N, k, Dd) vectors of N different chunks; differentiable (the trainer's
    ``objective.min_spread`` term). 0 means every chunk gets the same soft prompt, which then
    carries no content (a collapsed adapter, acting as a learned prompt); a freshly initialised
    adapter on the default models gives about 0.4."""
    v = vectors.float().flatten(1)  # (N, k * Dd)
    if v.shape[0] < 2:
        raise ValueError("the spread needs the soft prompts of at least two chunks")
    return (v - v.mean(0)).pow(2).sum(1).mean() / v.pow(2).sum(1).mean().clamp(min=1e-12)


def soft_prompt_spread(vectors: torch.Tensor) -> float:
    """:func:`spread` as a number, for reports."""
    return float(spread(vectors.detach()))


Context = Union[str, Sequence[str], SoftPrompts, None]
