"""The packed product (oneDNN; bf16, or float32 without bf16 units) that inference copies use for
their Linear layers.

Its own module so that both :mod:`e2llm.decoding` (which builds the copies) and
:mod:`e2llm.lean` (which fuses their products) import it from below, never from each other.
"""
from __future__ import annotations

import torch
from torch import nn

# Products with at most this many rows use the packed weight: decode steps, and the prefill of a
# spliced e2llm prompt (a few hundred tokens), where it beat plain bf16 F.linear 1.3-1.6x at 64-1024
# rows on an AMX CPU; from ~2K rows on they are equal (2026-12-02, SmolLM2-135M's shapes).
PACKED_MAX_ROWS = 1024


class PackedLinear(nn.Module):
    """A bf16 (or float32) Linear that keeps a oneDNN-packed copy of its weight for products of up
    to PACKED_MAX_ROWS rows (decode steps, short prefills) and the plain weight for more.
    gelu=True also applies the exact (erf) GELU inside the product, at any number of rows: the
    encoder's feed-forward then skips a pass over its widest activation (docs/speed.md).

    float32 is for CPUs without bf16 units: there plain F.linear of 2-9 rows (a token and its
    drafts) cost about twice one row, and the packed weight cut a decode pass's products 1.6x at
    one row and at two (scripts/research/fp32_packed_products.py, docs/speed.md)."""

    def __init__(self, linear: nn.Linear, gelu: bool = False, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.data, 1)
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")  # "none": erf, not tanh
        if x.numel() // x.shape[-1] <= PACKED_MAX_ROWS:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return nn.functional.linear(x, self.weight, self.bias)
