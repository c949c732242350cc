"""torch.compile of the lean forward (LeanDecoder._layers, dynamic=True, inductor freezing, plain bf16 weights since
inductor fails on the packed layout): compile time, then ms a token against eager.  Minutes on 2 cores.
    python scripts/research/probe_compile_decode.py"""
import time, torch, sys
from e2llm import E2LLM
engine = E2LLM.from_pretrained("default")
lean = engine._inference_decoder()
D = engine.config.decoder.hidden_size
emb, mask = torch.randn(1, 200, D) * 0.02, torch.ones(1, 200, dtype=torch.long)

def run(steps):
    lean.prefill(emb, mask, 200 + steps + 1)
    ids = torch.tensor([42]); out=[]
    t = time.perf_counter()
    for _ in range(steps):
        ids = lean.step(ids).argmax(-1); out.append(int(ids))
    return (time.perf_counter() - t) / steps, out

run(8)
eager = [run(32) for _ in range(3)]
print("eager", min(e[0] for e in eager)*1e3)
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
print("compiled", min(c[0] for c in comp)*1e3, "same tokens", comp[0][1]==eager[0][1])
lean._layers = orig
dec.PACKED_MAX_ROWS = 1024
eager = [run(32) for _ in range(3)]
print("eager again", min(e[0] for e in eager)*1e3)
