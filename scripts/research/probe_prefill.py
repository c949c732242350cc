"""Prefill time of the default decoder's bf16 inference copy at T tokens: transformers' forward
against e2llm.lean's, with the key/value heads expanded (repeat) or shared (enable_gqa).
    python scripts/research/probe_prefill.py 8152"""
import sys
import time

import torch
import torch.nn.functional as F

from e2llm import E2LLM
from e2llm import lean as lean_mod
from e2llm.decoding import _TransformersSteps

T = int(sys.argv[1]) if len(sys.argv) > 1 else 8152
engine = E2LLM.from_pretrained("default")
lean = engine._inference_decoder()
assert isinstance(lean, lean_mod.LeanDecoder)
from e2llm.decoding import build_inference_copy, fast_dtype  # noqa: E402
plain = build_inference_copy(engine.decoder, True, fast_dtype(torch.device("cpu"), torch.float32))
emb = torch.randn(1, T, engine.config.decoder.hidden_size) * 0.02
mask = torch.ones(1, T, dtype=torch.long)
sdpa = F.scaled_dot_product_attention


def gqa_sdpa(q, k, v, **kw):  # the shared-heads variant: undo the repeat, hand torch enable_gqa
    H, KV = q.shape[1], lean.num_kv_heads
    if k.shape[1] == H and H != KV and q.shape[2] > 1:
        k, v = k[:, :: H // KV], v[:, :: H // KV]
        return sdpa(q, k, v, enable_gqa=True, **kw)
    return sdpa(q, k, v, **kw)


def timed(name, fn, rounds=2):
    fn()
    best = min(_time(fn) for _ in range(rounds))
    print(f"{name:28s} {best:6.2f} s", flush=True)
    return best


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


hf = timed("transformers forward", lambda: _TransformersSteps(plain).prefill(emb, mask, T + 1))
rep = timed("lean, heads repeated", lambda: lean.prefill(emb, mask, T + 1))
lean_mod.F.scaled_dot_product_attention = gqa_sdpa
gqa = timed("lean, enable_gqa", lambda: lean.prefill(emb, mask, T + 1))
lean_mod.F.scaled_dot_product_attention = sdpa
print(f"lean repeated / transformers: {rep / hf:.2f}x time; enable_gqa / transformers: {gqa / hf:.2f}x")
