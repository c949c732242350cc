"""torch.profiler's operator table for 16 one-token lean decode steps (after a 200-token prefill) of the default
engine's bf16 copy: which ops the ~9 ms a step outside the weight products go to.
    python scripts/research/profile_decode_step.py"""
from torch.profiler import ProfilerActivity, profile

from lean_steps import lean_decoder, step_loop

engine, lean = lean_decoder()
run = step_loop(lean)
run(8)  # warm
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(16)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
