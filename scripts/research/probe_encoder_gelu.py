"""The ranker's pass over an 8K synthetic document with the encoder copy's GELU inside the packed
feed-forward product (as shipped) and as a separate op (the copy built with fuse_gelu=False),
interleaved, median of 7; and how far the ranking vectors and the chunk order move.
    python scripts/research/probe_encoder_gelu.py"""
import statistics
import time

import torch

from e2llm import E2LLM, bench
from e2llm.decoding import InferenceCopies

engine = E2LLM.from_pretrained("default")
doc = bench.make_document(engine.decoder_tokenizer, 8192)
texts = [c.text for c in engine.chunk(doc)]
question = bench.QUESTION
copies = {"GELU in the product": InferenceCopies(lean=False, pack=False, fuse_gelu=True),
          "GELU apart": InferenceCopies(lean=False, pack=False, fuse_gelu=False)}


def rank(name):
    engine._encoder_copies = copies[name]
    engine.cache.clear()
    start = time.perf_counter()
    vectors = engine.retrieval_vectors(texts)
    seconds = time.perf_counter() - start
    return seconds, vectors, (vectors @ engine.retrieval_vectors([question])[0]).argsort(descending=True)


for name in copies:
    rank(name)
times, out = {name: [] for name in copies}, {}
for _ in range(7):
    for name in copies:
        seconds, vectors, order = rank(name)
        times[name].append(seconds)
        out[name] = (vectors, order)
for name, ts in times.items():
    print(f"{name}: {statistics.median(ts):.3f} s for {len(texts)} chunks")
(v1, o1), (v2, o2) = out.values()
print(f"largest ranking-vector difference {(v1 - v2).abs().max().item():.4f}; same top 3: "
      f"{o1[:3].tolist() == o2[:3].tolist()}; same order: {o1.tolist() == o2.tolist()}")
