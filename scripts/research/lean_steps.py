"""Shared by the decode-step probes: the default engine's lean decoder and a timed greedy loop on a 200-token
random prompt (import it from a script in this folder)."""
import time

import torch

from e2llm import E2LLM


def lean_decoder():
    engine = E2LLM.from_pretrained("default")
    return engine, engine._inference_decoder()


def step_loop(lean, prompt_tokens: int = 200):
    """run(steps) -> (ms a token, the greedy token ids), each run from a fresh prefill."""
    D = lean.embed.weight.shape[1]
    emb, mask = torch.randn(1, prompt_tokens, D) * 0.02, torch.ones(1, prompt_tokens, dtype=torch.long)

    def run(steps: int = 32):
        lean.prefill(emb, mask, prompt_tokens + steps + 1)
        ids, out = torch.tensor([42]), []
        start = time.perf_counter()
        for _ in range(steps):
            ids = lean.step(ids).argmax(-1)
            out.append(int(ids))
        return 1e3 * (time.perf_counter() - start) / steps, out

    return run


def timed_ms(f, reps: int = 20, rounds: int = 5, pick=min) -> float:
    """ms a call of f: rounds of reps calls after one warm-up call, the rounds' mean per call reduced by pick
    (min: the machine's best; statistics.median: its typical)."""
    f()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            f()
        times.append(1e3 * (time.perf_counter() - start) / reps)
    return pick(times)
