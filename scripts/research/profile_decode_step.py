"""Where a fast decode step's time goes (lean forward, bf16 copy of the default decoder, a 200-token
prompt): torch.profiler's operator table over 32 steps.   python scripts/research/profile_decode_step.py"""
from torch.profiler import ProfilerActivity, profile

from lean_steps import lean_decoder, step_loop

engine, lean = lean_decoder()
run = step_loop(lean)
run(8)
print(f"lean step: {min(run(32)[0] for _ in range(3)):.1f} ms a token")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(32)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
