"""The encoder at inference, fp32 against bf16 autocast, side by side in one run: the
soft-prompt pass on an 8K document (time, and how far the soft prompts move), and the held-out
reconstruction report (`e2llm validate`) under each.

    python scripts/bench_encoder_precision.py
"""
import time

import torch

from e2llm import E2LLM
from e2llm.train.corpus import load_corpus
from e2llm.train.validate import reconstruction_report

engine = E2LLM.from_pretrained("default")
texts = [c.text for c in engine.chunk("\n\n".join(d.text for d in load_corpus()[:60]))[:128]]


def soft_prompts(autocast: bool) -> tuple[torch.Tensor, float]:
    engine.autocast_encoder = autocast
    engine.cache.clear()
    t = time.perf_counter()
    with torch.no_grad():
        out = engine.soft_prompts(texts)
    return out.float(), time.perf_counter() - t


times, outs = {False: [], True: []}, {}
for _ in range(3):
    for autocast in times:
        outs[autocast], seconds = soft_prompts(autocast)
        times[autocast].append(seconds)
for autocast, ts in times.items():
    print(f"{'bf16 autocast' if autocast else 'fp32':14s} soft-prompt pass, 128 chunks: {[round(x, 2) for x in ts]} s, best {min(ts):.2f}")
print(f"speed-up {min(times[False]) / min(times[True]):.2f}x")
a, b = outs[False].flatten(1), outs[True].flatten(1)
print(f"soft prompts: relative difference {float((a - b).norm() / a.norm()):.4f}, "
      f"lowest cosine {float(torch.nn.functional.cosine_similarity(a, b).min()):.5f}")
for autocast in (False, True):
    engine.autocast_encoder = autocast
    engine.cache.clear()
    r = reconstruction_report(engine)
    print(f"{'bf16 autocast' if autocast else 'fp32':14s} held-out reconstruction: with soft prompt {r['loss_with_soft_prompt']:.4f}, "
          f"without {r['loss_without']:.4f} nats/token, ROUGE-L {r['rouge_l']:.4f}")
