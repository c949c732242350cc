"""The memory-bandwidth floor of a one-token decode step on this machine, and what it allows for issue 22's
cached-question target.

A one-token step must read every weight product's bf16 weights once (30 layers' qkv, o, gate_up, down and
the tied head). This prints those bytes, the bandwidth of a plain bf16 read and of the same products as
plain matvecs and as the shipped packed products, the floor in ms a token, and, given a `e2llm bench
latency` JSON, the largest first/cached-question ratio (total, N new tokens) any one-token-a-pass decoder
could reach on this machine, both questions decoding at the floor: (first_ttft + 31 x floor) / (cached_ttft +
31 x floor) for the issue's 32 new tokens.
    python scripts/research/decode_floor.py [build/lat/latency.json]"""
import json
import sys

import torch

from lean_steps import lean_decoder
from lean_steps import timed_ms as best_ms


engine, lean = lean_decoder()
products = [m for name in ("qkv", "o", "gate_up", "down") for m in getattr(lean, name)] + [lean.lm_head]
weights = [m.weight.detach().to(torch.bfloat16) for m in products]  # (out, in) each
weight_bytes = sum(w.numel() * w.element_size() for w in weights)
xs = [torch.randn(1, w.shape[1], dtype=torch.bfloat16) for w in weights]

big = torch.ones(128 * 2**20, dtype=torch.bfloat16)  # 256 MiB, far past the caches
read_gbs = big.numel() * 2 / best_ms(big.sum, reps=3) / 1e6
matvec_gbs = weight_bytes / best_ms(lambda: [x @ w.T for x, w in zip(xs, weights)]) / 1e6
packed_in = [torch.randn(1, 1, w.shape[1], dtype=torch.bfloat16) for w in weights]
packed_gbs = weight_bytes / best_ms(lambda: [m(x) for m, x in zip(products, packed_in)]) / 1e6
floor_ms = weight_bytes / max(read_gbs, matvec_gbs, packed_gbs) / 1e6

print(f"weights read per one-token step: {weight_bytes / 1e6:.0f} MB ({len(weights)} products)")
print(f"plain bf16 read of 256 MiB: {read_gbs:.1f} GB/s")
print(f"the step's products as plain matvecs: {matvec_gbs:.1f} GB/s ({weight_bytes / matvec_gbs / 1e6:.1f} ms)")
print(f"the step's products as shipped (packed): {packed_gbs:.1f} GB/s ({weight_bytes / packed_gbs / 1e6:.1f} ms)")
print(f"floor at the best of these: {floor_ms:.1f} ms a token")

if len(sys.argv) > 1:
    rows = json.load(open(sys.argv[1]))
    for size in sorted({r["context_tokens"] for r in rows}):
        by = {r["system"]: r for r in rows if r["context_tokens"] == size}
        if "e2llm" not in by or "e2llm (cached)" not in by:
            continue
        first, cached = by["e2llm"], by["e2llm (cached)"]
        decode_s = 31 * floor_ms / 1e3
        ceiling = (first["ttft_s"] + decode_s) / (cached["ttft_s"] + decode_s)
        print(f"{size} tokens: TTFT first {first['ttft_s']:.3f} s, cached {cached['ttft_s']:.3f} s -> first/cached "
              f"total with 32 new tokens at most {ceiling:.1f}x at the floor (measured: "
              f"{first['total_s'] / cached['total_s']:.1f}x)")
