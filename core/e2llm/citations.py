"""Citations: how much of the answer's attention went to each chunk's soft tokens and to each
raw passage, without ever holding an attention matrix.

The decoder runs once over ``prompt + answer`` with its own attention kernel (sdpa, flash,
eager) for the layer outputs. An attention function registered with transformers'
``AttentionInterface`` wraps that kernel and, on the side, computes softmax(q K^T) for the
answer's query rows only, summing it over rows and heads into one (T,) vector per call.
Memory: O(rows x heads x T) per layer, freed before the next layer, instead of the
O(layers x heads x T^2) that ``output_attentions=True`` stacks.
"""
from __future__ import annotations

import contextlib
import sys

import torch

from .errors import E2LLMError

_PREFIX = "e2llm_cite_"  # registered name: _PREFIX + the kernel it wraps
_ROW_BLOCK = 32  # answer rows per softmax: bounds the (heads, rows, T) scores at any answer length


class RowAttention:
    """Sums, over layers, heads and the given query rows, the attention each key position gets."""

    def __init__(self, rows: slice):
        self.rows = rows
        self.mass: torch.Tensor | None = None  # (T,) float32
        self.calls = 0  # attention layers seen: 0 means the model never called us

    @torch.no_grad()
    def add(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float | None, kwargs: dict) -> None:
        # query (1, H, T, Dh) after rotary embeddings; key (1, Hkv, T, Dh), grouped-query aware
        H, T, Dh = query.shape[1], key.shape[2], query.shape[-1]
        Hkv = key.shape[1]
        scaling = Dh ** -0.5 if scaling is None else scaling
        softcap, window = kwargs.get("softcap"), kwargs.get("sliding_window")
        k = key[0].float()  # (Hkv, T, Dh)
        keys = torch.arange(T, device=key.device)
        mass = torch.zeros(T, dtype=torch.float32, device=key.device)
        rows = range(*self.rows.indices(query.shape[2]))
        for start in range(rows.start, rows.stop, _ROW_BLOCK):
            stop = min(start + _ROW_BLOCK, rows.stop)
            q = query[0, :, start:stop].float().view(Hkv, H // Hkv, stop - start, Dh)  # (Hkv, G, A, Dh)
            scores = torch.einsum("kgad,ktd->kgat", q, k) * scaling  # (Hkv, G, A, T)
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            at = torch.arange(start, stop, device=key.device)[:, None]  # (A, 1) query positions
            allowed = keys[None, :] <= at  # causal
            if window:
                allowed &= keys[None, :] > at - window
            scores.masked_fill_(~allowed, float("-inf"))
            mass += scores.softmax(-1).sum((0, 1, 2))
        self.mass = mass if self.mass is None else self.mass + mass
        self.calls += 1


def _wrapping(kernel: str):
    """An attention function: `kernel`'s output, plus the rows' attention into the accumulator."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        acc = kwargs.pop("e2llm_row_attention", None)
        if kernel == "eager":  # each model file has its own eager function (softcap, sinks, ...)
            fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
        else:
            fn = ALL_ATTENTION_FUNCTIONS[kernel]
        out = fn(module, query, key, value, attention_mask, *args, **kwargs)
        if acc is not None:
            acc.add(module, query, key, kwargs.get("scaling", getattr(module, "scaling", None)), kwargs)
        return out

    return attention


def _registered(kernel: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import AttentionInterface

    name = _PREFIX + kernel
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _wrapping(kernel))
        if kernel in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:  # masks as the wrapped kernel gets them
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel])
    return name


@contextlib.contextmanager
def row_attention_kernel(base_model):
    """Within: `base_model` attends through the wrapping function (callers hold the engine's lock)."""
    kernel = base_model.config._attn_implementation or "eager"
    if kernel.startswith(_PREFIX):
        kernel = kernel[len(_PREFIX):]
    base_model.set_attn_implementation(_registered(kernel))
    try:
        yield
    finally:
        base_model.set_attn_implementation(kernel)


@torch.no_grad()
def answer_attention(base_model, inputs_embeds: torch.Tensor, rows: slice) -> torch.Tensor:
    """(T,) attention mass each position of ``inputs_embeds`` (1, T, Dd) got from the query
    `rows`, summed over layers and heads (no LM head, no KV cache)."""
    acc = RowAttention(rows)
    with row_attention_kernel(base_model):
        base_model.base_model(inputs_embeds=inputs_embeds, use_cache=False, e2llm_row_attention=acc)
    if acc.calls == 0 or acc.mass is None:
        raise E2LLMError(f"citations need a decoder whose attention goes through transformers' AttentionInterface; "
                         f"{type(base_model).__name__} does not, so return_citations cannot be used with it")
    return acc.mass
