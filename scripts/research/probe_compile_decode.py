"""torch.compile of the lean forward (LeanDecoder._layers, dynamic=True, inductor freezing, plain bf16 weights since
inductor fails on the packed layout): compile time, then ms a token against eager.  Minutes on 2 cores.
    python scripts/research/probe_compile_decode.py"""
import time

import torch

from lean_steps import lean_decoder, step_loop

engine, lean = lean_decoder()
run = step_loop(lean)
run(8)
eager = [run(32) for _ in range(3)]
print("eager", min(e[0] for e in eager))
orig = lean._layers
import e2llm.decoding as dec
import torch._inductor.config as ic
ic.freezing = True
dec.PACKED_MAX_ROWS = 0
t=time.perf_counter()
lean._layers = torch.compile(orig, dynamic=True)
r = run(4); print("first compiled run", time.perf_counter()-t)
t=time.perf_counter(); r=run(32); print("second", time.perf_counter()-t)
comp = [run(32) for _ in range(3)]
print("compiled", min(c[0] for c in comp), "same tokens", comp[0][1]==eager[0][1])
lean._layers = orig
dec.PACKED_MAX_ROWS = 1024
eager = [run(32) for _ in range(3)]
print("eager again", min(e[0] for e in eager))
