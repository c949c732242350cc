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



Context = Union[str, Sequence[str], SoftPrompts, None]
