"""The encoder at inference, fp32 against bf16 autocast (`engine.autocast_encoder`), side by
side in one run on 128 chunks of an 8K document: the soft-prompt pass (time, and how far the
soft prompts move), the hybrid ranking pass (time, and whether the chunk order agrees), and
the held-out reconstruction report (`e2llm validate`) under each.

    python scripts/bench_encoder_precision.py
"""
import time

import torch

from e2llm import E2LLM
from e2llm.train.corpus import load_corpus
from e2llm.train.validate import reconstruction_report

engine = E2LLM.from_pretrained("default")
texts = [c.text for c in engine.chunk("\n\n".join(d.text for d in load_corpus()[:60]))[:128]]
question = "What does the document say about exceptions?"
PASSES = {
    "soft-prompt pass": lambda: engine.soft_prompts(texts),
    "ranking pass": lambda: engine.retrieval_vectors(texts) @ engine.retrieval_vectors([question])[0],
}


def label(autocast: bool) -> str:
    return "bf16 autocast" if autocast else "fp32"


outs = {}
for name, run in PASSES.items():
    times = {False: [], True: []}
    for _ in range(3):
        for autocast in times:
            engine.autocast_encoder = autocast
            engine.cache.clear()
            t = time.perf_counter()
            with torch.no_grad():
                outs[name, autocast] = run().float()
            times[autocast].append(time.perf_counter() - t)
    for autocast, ts in times.items():
        print(f"{name}, {label(autocast):14s}: {[round(x, 2) for x in ts]} s, best {min(ts):.2f}")
    print(f"{name}: speed-up {min(times[False]) / min(times[True]):.2f}x")

a, b = outs["soft-prompt pass", False].flatten(1), outs["soft-prompt pass", True].flatten(1)
print(f"soft prompts: relative difference {float((a - b).norm() / a.norm()):.4f}, "
      f"lowest cosine {float(torch.nn.functional.cosine_similarity(a, b).min()):.5f}")
exact, fast = outs["ranking pass", False], outs["ranking pass", True]
print("ranking: top 2, fp32:", sorted(exact.topk(2).indices.tolist()), " bf16:", sorted(fast.topk(2).indices.tolist()),
      f" largest cosine difference {float((exact - fast).abs().max()):.4f}")
for autocast in (False, True):
    engine.autocast_encoder = autocast
    engine.cache.clear()
    r = reconstruction_report(engine)
    print(f"{label(autocast):14s} held-out reconstruction: with soft prompt {r['loss_with_soft_prompt']:.4f}, "
          f"without {r['loss_without']:.4f} nats/token, ROUGE-L {r['rouge_l']:.4f}")
