"""The soft-prompt splice: the one place where token ids and soft vectors become inputs_embeds.

Inference and training both describe each sample as a list of pieces,
``[Tokens(prefix), Soft(chunk vectors), Tokens(question), Tokens(answer, target=True)]``,
and call :func:`splice`. Nothing else in the package builds ``inputs_embeds``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

IGNORE_INDEX = -100  # label for positions that are not predicted (HF convention)


@dataclass(frozen=True)
class Tokens:
    ids: Sequence[int]
    target: bool = False  # predict these tokens (they get labels)


@dataclass(frozen=True)
class Soft:
    vectors: torch.Tensor  # (n, Dd) soft tokens, already in the decoder's embedding space


Piece = Union[Tokens, Soft]


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor  # (B, T, Dd)
    attention_mask: torch.Tensor  # (B, T) 1 = real position
    labels: torch.Tensor  # (B, T) token id where predicted, else IGNORE_INDEX
    position_ids: torch.Tensor  # (B, T) 0.. over real positions, whichever side is padded
    token_ids: torch.Tensor  # (B, T) the token id at text positions, -1 at soft tokens and padding (decoding drafts from them)

    @property
    def soft_mask(self) -> torch.Tensor:
        """(B, T) True where a soft token sits (citations, tests): a real position without a token id."""
        return (self.token_ids < 0) & self.attention_mask.bool()


def splice(
    samples: Sequence[Sequence[Piece]],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    pad_left: bool = True,
) -> Spliced:
    """Concatenate each sample's pieces into embeddings and pad the batch.

    embed_tokens: the decoder's input embedding (ids (n,) -> (n, Dd)).
    pad_left: left padding for generation (new tokens follow the last real position),
    right padding for training.
    """
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for pieces in samples:
        embs, labels, token_ids = [], [], []
        for p in pieces:
            if isinstance(p, Soft):
                n = p.vectors.shape[0]
                embs.append(p.vectors)
                labels.append(torch.full((n,), IGNORE_INDEX, dtype=torch.long))
                token_ids.append(torch.full((n,), -1, dtype=torch.long))
            else:
                ids = torch.as_tensor(list(p.ids), dtype=torch.long)
                if ids.numel() == 0:
                    continue
                embs.append(embed_tokens(ids.to(_device_of(embed_tokens))))
                labels.append(ids if p.target else torch.full_like(ids, IGNORE_INDEX))
                token_ids.append(ids)
        if not embs:
            raise ValueError("splice: a sample has no pieces")
        dtype = embs[0].dtype
        rows.append((torch.cat([e.to(dtype) for e in embs]), torch.cat(labels), torch.cat(token_ids)))

    B, T = len(rows), max(r[0].shape[0] for r in rows)
    Dd = rows[0][0].shape[1]
    ref = rows[0][0]
    inputs_embeds = ref.new_zeros(B, T, Dd)
    attention_mask = torch.zeros(B, T, dtype=torch.long, device=ref.device)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=ref.device)
    token_ids = torch.full((B, T), -1, dtype=torch.long, device=ref.device)
    for b, (e, lab, tid) in enumerate(rows):
        n = e.shape[0]
        sl = slice(T - n, T) if pad_left else slice(0, n)
        inputs_embeds[b, sl] = e
        attention_mask[b, sl] = 1
        labels[b, sl] = lab.to(ref.device)
        token_ids[b, sl] = tid.to(ref.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Spliced(inputs_embeds, attention_mask, labels, position_ids, token_ids)


def _device_of(embed_tokens) -> torch.device:
    weight = getattr(embed_tokens, "weight", None)
    return weight.device if weight is not None else torch.device("cpu")
