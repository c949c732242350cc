"""Where a one-token lean decode step goes: the step, its weight products called alone, and the step with every
product replaced by a preallocated output (what is left: attention and the small ops).
    python scripts/research/decode_step_breakdown.py"""
import statistics
import time

import torch

from lean_steps import lean_decoder, step_loop

engine, lean = lean_decoder()
D = engine.config.decoder.hidden_size
loop = step_loop(lean)


def run(steps):
    return loop(steps)[0]


mods = [m for name in ("qkv","o","gate_up","down") for m in getattr(lean, name)]
xs = {m: torch.randn(1,1,m.weight.shape[1]).bfloat16() for m in mods}
hx = torch.randn(1,1,D).bfloat16()
def lin():
    t = time.perf_counter()
    for _ in range(32):
        for m in mods: m(xs[m])
        lean.lm_head(hx)
    return (time.perf_counter()-t)/32*1e3
def head():
    t = time.perf_counter()
    for _ in range(32): lean.lm_head(hx)
    return (time.perf_counter()-t)/32*1e3
run(8); lin()
for _ in range(3):
    print(f"step {statistics.median([run(32) for _ in range(3)]):.1f}  linears alone {statistics.median([lin() for _ in range(3)]):.1f}  head {head():.2f}")
import torch.nn as nn
class Stub(nn.Module):
    def __init__(s, m):
        super().__init__(); s.out = torch.zeros(1,1,m.weight.shape[0]).bfloat16()
    def forward(s, x): return s.out if x.shape[1]==1 else torch.zeros(*x.shape[:-1], s.out.shape[-1]).bfloat16()
saved = {n: list(getattr(lean, n)) for n in ("qkv","o","gate_up","down")}
for n, ms in saved.items():
    for i, m in enumerate(ms): getattr(lean, n)[i] = Stub(m)
print("torch threads", torch.get_num_threads())
for _ in range(3): print(f"step without linear cost {statistics.median([run(32) for _ in range(3)]):.1f}")
torch.set_num_threads(1)
for _ in range(2): print(f"1 thread: step without linear cost {statistics.median([run(32) for _ in range(3)]):.1f}")
