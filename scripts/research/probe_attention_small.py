"""Attention at the shapes e2llm runs it, alone: SDPA (the flash kernel for CPU) against matmul-softmax-matmul.
  encoder: 64 chunks x 12 heads x 66 tokens x 32 dims, some rows padded (a ranker batch, one layer)
  decode:  one query, 9 heads over 3 KV heads x 64 dims, 200/400/2000 cached positions (a decode step, one layer)
Prints microseconds a call and the largest difference from float32 SDPA.
    python scripts/research/probe_attention_small.py"""
import time

import torch
from torch.nn import functional as F

torch.manual_seed(0)
bf16 = torch.bfloat16


def timed_us(f, n=100):
    for _ in range(5):
        f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return 1e6 * (time.perf_counter() - start) / n


def report(label, ref, variants):
    for name, f in variants.items():
        print(f"{label:14s} {name:26s} {timed_us(f):9.1f} us   max |diff| {(f().float() - ref).abs().max().item():.4f}")


B, H, L, hd = 64, 12, 66, 32
q, k, v = (torch.randn(B, H, L, hd, dtype=bf16) for _ in range(3))
keep = torch.ones(B, L, dtype=torch.bool)
keep[::3, 50:] = False  # a third of the chunks shorter than the batch's longest
additive = torch.zeros(B, 1, 1, L, dtype=bf16).masked_fill(~keep[:, None, None], float("-inf"))
ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep[:, None, None])
report("encoder", ref, {
    "sdpa, bool mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None]),
    "manual, bf16 softmax": lambda: ((q @ k.mT) * hd ** -0.5 + additive).softmax(-1) @ v,
    "manual, float32 softmax": lambda: ((q @ k.mT).float() * hd ** -0.5 + additive).softmax(-1).to(bf16) @ v,
})

KV, G, hd = 3, 3, 64
for length in (200, 400, 2000):
    q = torch.randn(1, KV, G, hd, dtype=bf16)
    k, v = (torch.randn(1, KV, length + 50, hd, dtype=bf16)[:, :, :length] for _ in range(2))  # a cache's filled part
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    report(f"decode L={length}", ref, {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "manual, bf16 softmax": lambda: ((q @ k.mT) * hd ** -0.5).softmax(-1) @ v,
        "manual, float32 softmax": lambda: torch.softmax((q * hd ** -0.5) @ k.mT, -1, dtype=torch.float32).to(bf16) @ v,
    })
