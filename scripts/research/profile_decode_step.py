"""Where a fast decode step's time goes (lean forward, bf16 copy of the default decoder, a 200-token
prompt): torch.profiler's operator table over 32 steps.   python scripts/research/profile_decode_step.py"""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from e2llm import E2LLM

engine = E2LLM.from_pretrained("default")
lean = engine._inference_decoder()
D = engine.config.decoder.hidden_size
emb, mask = torch.randn(1, 200, D) * 0.02, torch.ones(1, 200, dtype=torch.long)


def run(steps):
    lean.prefill(emb, mask, 200 + steps + 1)
    ids = torch.tensor([42])
    t = time.perf_counter()
    for _ in range(steps):
        ids = lean.step(ids).argmax(-1)
    return (time.perf_counter() - t) / steps


run(8)
print(f"lean step: {1e3 * min(run(32) for _ in range(3)):.1f} ms a token")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(32)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
