"""Int8 weight-only decode steps: the lean bf16 copy's one-row products read half the bytes.

A decode step of the 135M default decoder is bound by reading its weights (0.27 GB in bf16 a
token); torch's CPU kernel `_weight_int8pack_mm` multiplies by int8 weights with one bf16 scale
per output row. This probe swaps the lean copy's packed bf16 products for that (prefills keep
bf16 F.linear, where AMX pays), then times both interleaved and checks greedy agreement with
float32 on held-out items, as `e2llm bench decode` does for bf16.
    python scripts/research/probe_int8_decode.py [items] [all|layers|head]   (which products go int8)"""
import statistics
import sys
import time

import torch
from torch import nn

from e2llm import E2LLM
from e2llm.bench import decode_agreement


class Int8Linear(nn.Module):
    def __init__(self, packed):
        super().__init__()
        w = packed.weight.detach().float()  # (N, K)
        scale = w.abs().amax(1).clamp(min=1e-8) / 127  # (N,) one scale a row
        self.weight = packed.weight
        self.bias = packed.bias
        self.qweight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16)

    def forward(self, x):
        if x.numel() // x.shape[-1] <= 16:
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.qweight, self.scale)
            y = y.view(*x.shape[:-1], -1)
            return y if self.bias is None else y + self.bias
        return nn.functional.linear(x, self.weight, self.bias)


def step_ms(lean, steps=32):
    D = lean.embed.weight.shape[1]
    lean.prefill(torch.randn(1, 200, D) * 0.02, torch.ones(1, 200, dtype=torch.long), 200 + steps + 1)
    ids = torch.tensor([42])
    t = time.perf_counter()
    for _ in range(steps):
        ids = lean.step(ids).argmax(-1)
    return 1e3 * (time.perf_counter() - t) / steps


items = int(sys.argv[1]) if len(sys.argv) > 1 else 40
parts = sys.argv[2] if len(sys.argv) > 2 else "all"
engine = E2LLM.from_pretrained("default")
lean = engine._inference_decoder()
packed = {name: [m for m in getattr(lean, name)] for name in ("qkv", "o", "gate_up", "down")}
packed_head = lean.lm_head
int8 = {name: [Int8Linear(m) for m in ms] if parts != "head" else ms for name, ms in packed.items()}
int8_head = Int8Linear(packed_head) if parts != "layers" else packed_head


def use(kind):
    src, head = (packed, packed_head) if kind == "bf16 packed" else (int8, int8_head)
    for name, ms in src.items():
        for i, m in enumerate(ms):
            getattr(lean, name)[i] = m
    lean.lm_head = head


print(f"int8 products: {parts}")
times = {"bf16 packed": [], "int8 weight-only": []}
for kind in times:
    use(kind)
    step_ms(lean, 8)
for _ in range(5):
    for kind in times:
        use(kind)
        times[kind].append(step_ms(lean))
for kind, ts in times.items():
    print(f"{kind}: {statistics.median(ts):.1f} ms a token (median of 5 interleaved runs of 32 steps)")
use("int8 weight-only")
same, total, diffs = decode_agreement(engine, items)
print(f"int8 vs float32 greedy text: identical on {same}/{total}")
for d in diffs:
    print("  ", d)
