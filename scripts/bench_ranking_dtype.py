"""The hybrid ranking pass (encoder, LoRA off) on 128 chunks of an 8K document: fp32 against
bf16 autocast, side by side in one run, and whether the chunk order agrees.

    python scripts/bench_ranking_dtype.py
"""
import time

import torch

import e2llm.model as model_module
from e2llm import E2LLM
from e2llm.train.corpus import load_corpus

engine = E2LLM.from_pretrained("default")
texts = [c.text for c in engine.chunk("\n\n".join(d.text for d in load_corpus()[:60]))[:128]]
question = "What does the document say about exceptions?"


def similarities(autocast: bool) -> torch.Tensor:
    engine.cache.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return (engine.retrieval_vectors(texts).float() @ engine.retrieval_vectors([question]).float().T).squeeze(-1)


model_module._cpu_has_bf16 = lambda: False  # the engine's own switch off: this script sets the precision
times, sims = {"fp32": [], "bf16 autocast": []}, {}
for _ in range(3):
    for name in times:
        t = time.perf_counter()
        sims[name] = similarities(name != "fp32")
        times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name:14s} seconds {[round(x, 2) for x in ts]}  best {min(ts):.2f}")
print("top 2, fp32:", sorted(sims["fp32"].topk(2).indices.tolist()), " bf16:", sorted(sims["bf16 autocast"].topk(2).indices.tolist()))
print(f"largest cosine difference {float((sims['fp32'] - sims['bf16 autocast']).abs().max()):.4f}")
print(f"speed-up {min(times['fp32']) / min(times['bf16 autocast']):.2f}x")
