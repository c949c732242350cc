"""Adapters: encoder token states of a chunk -> k soft-prompt vectors in the decoder's space.

Two kinds, as in the paper:
- ``pma`` (v2, "vPMA"): k learnable queries attend over all token states of the chunk;
  keys/values are projected straight to the decoder width; residual + LayerNorm + FFN +
  LayerNorm.
- ``mlp`` (v1): the pooled chunk vector through a 2-layer GELU MLP (to k vectors).

Both end in a LayerNorm whose gain starts at the decoder's token-embedding RMS, so soft
prompts enter the decoder at the scale of ordinary token embeddings from step 0.

Two options change the geometry (config ``adapter.span`` and ``adapter.anchor``):
- ``span: local``: soft token j pools only the j-th of k equal parts of its chunk's tokens, so
  each knows its own stretch of text (REFRAG's one vector per ~16 tokens); ``chunk``: every
  query attends over the whole chunk, and cannot tell which part it pools.
- ``anchor: mean_embedding``: the adapter's output is added to the mean of the decoder's own
  token embeddings of that part (rescaled to a token embedding's RMS), which the untrained
  decoder already partly reads; the adapter then learns a correction that starts small.
  Needs an encoder that shares the decoder's vocabulary (``encoder.name_or_path: decoder``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, De) token states, (B, T) mask -> (B, De) mean over the real tokens: a sentence
    embedding, as the pretrained encoder was trained to give."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1)


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, De) token states, (B, T) mask -> (B, De), pooled as the encoder was trained:
    "mean" (MiniLM, GTE), "cls" (the first token: BGE), "max" over real tokens, or "last"
    (the last real token, whichever side is padded: decoder-style embedders)."""
    if mode == "mean":
        return mean_pool(states, mask)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(states.dtype).min).amax(1)
    if mode == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.bool() * positions).argmax(1)  # (B,) index of the last real token
        return states[torch.arange(states.shape[0], device=states.device), last]
    raise ValueError(f"unknown pooling '{mode}'; use mean, cls, max or last")


def span_parts(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(N, L) mask -> (N, k, L) bool: real token t is in part j when it lies in the j-th of k
    equal stretches of its row's real tokens (padding on either side). A part left empty (a
    chunk of fewer than k tokens) takes the whole chunk, so no query attends over nothing."""
    real = mask.bool()
    num_real = real.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
    rank = real.long().cumsum(1) - 1  # (N, L) position among the real tokens
    part = rank * k // num_real  # (N, L) in [0, k)
    parts = (part.unsqueeze(1) == torch.arange(k, device=mask.device)[None, :, None]) & real.unsqueeze(1)
    empty = ~parts.any(-1, keepdim=True)  # (N, k, 1)
    return parts | (empty & real.unsqueeze(1))


def span_means(embeds: torch.Tensor, mask: torch.Tensor, k: int, rms: float) -> torch.Tensor:
    """(N, L, D) token embeddings, (N, L) mask -> (N, k, D): the mean of each of the k parts
    (``span_parts``), rescaled to RMS ``rms`` (a mean of many embeddings is shorter than one)."""
    parts = span_parts(mask, k).to(embeds.dtype)  # (N, k, L)
    means = parts @ embeds / parts.sum(-1, keepdim=True).clamp(min=1)  # (N, k, D)
    return means * (rms / means.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-6))


class PMAAdapter(nn.Module):
    def __init__(self, enc_dim: int, dec_dim: int, k: int, num_heads: int, ffn_mult: int, output_rms: float,
                 local: bool = False, anchored: bool = False):
        super().__init__()
        if dec_dim % num_heads:
            raise ValueError(f"adapter.num_heads ({num_heads}) must divide the decoder width ({dec_dim})")
        self.k, self.num_heads, self.local = k, num_heads, local
        self.queries = nn.Parameter(torch.randn(k, dec_dim) * dec_dim**-0.5)
        self.q_proj = nn.Linear(dec_dim, dec_dim)
        self.kv_proj = nn.Linear(enc_dim, 2 * dec_dim)  # straight to decoder width
        self.o_proj = nn.Linear(dec_dim, dec_dim)
        self.norm1 = nn.LayerNorm(dec_dim)
        self.ffn = nn.Sequential(nn.Linear(dec_dim, ffn_mult * dec_dim), nn.GELU(), nn.Linear(ffn_mult * dec_dim, dec_dim))
        self.norm2 = nn.LayerNorm(dec_dim)
        with torch.no_grad():  # anchored: a correction of the anchor, a tenth of its scale at first
            self.norm2.weight.fill_(output_rms * (0.1 if anchored else 1.0))

    def forward(self, states: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        # states (N, L, De), mask (N, L) with 1 for real tokens, anchor (N, k, Dd) or None -> (N, k, Dd)
        N, L, _ = states.shape
        H, Dd = self.num_heads, self.queries.shape[-1]
        q = self.q_proj(self.queries).view(1, self.k, H, Dd // H).transpose(1, 2).expand(N, H, self.k, Dd // H)
        kv = self.kv_proj(states).view(N, L, 2, H, Dd // H).permute(2, 0, 3, 1, 4)  # (2, N, H, L, Dh)
        # local: query j sees only its part of the chunk (N, 1, k, L); else every real token (N, 1, 1, L)
        attn_mask = span_parts(mask, self.k)[:, None] if self.local else mask.bool()[:, None, None, :]
        x = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)  # (N, H, k, Dh)
        x = self.o_proj(x.transpose(1, 2).reshape(N, self.k, Dd))
        h = self.norm1(self.queries + x)  # residual on the (shared) queries
        out = self.norm2(h + self.ffn(h))
        return out if anchor is None else anchor.to(out.dtype) + out


class MLPAdapter(nn.Module):
    def __init__(self, enc_dim: int, dec_dim: int, k: int, hidden: int, pooling: str, output_rms: float):
        super().__init__()
        self.k, self.pooling = k, pooling
        self.mlp = nn.Sequential(nn.Linear(enc_dim, hidden), nn.GELU(), nn.Linear(hidden, k * dec_dim))
        self.norm = nn.LayerNorm(dec_dim)
        with torch.no_grad():
            self.norm.weight.fill_(output_rms)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        # states (N, L, De), mask (N, L) -> (N, k, Dd)
        if anchor is not None:
            raise ValueError("adapter.anchor needs adapter.kind: pma")
        out = self.mlp(pool(states, mask, self.pooling))  # (N, k*Dd)
        return self.norm(out.view(out.shape[0], self.k, -1))


def build_adapter(cfg: AdapterConfig, enc_dim: int, dec_dim: int, pooling: str | None = "mean") -> nn.Module:
    rms = cfg.output_rms or 1.0
    if cfg.kind == "pma":
        return PMAAdapter(enc_dim, dec_dim, cfg.tokens_per_chunk, cfg.num_heads, cfg.ffn_mult, rms,
                          local=cfg.span == "local", anchored=cfg.anchor != "none")
    return MLPAdapter(enc_dim, dec_dim, cfg.tokens_per_chunk, cfg.mlp_hidden_size, pooling or "mean", rms)
