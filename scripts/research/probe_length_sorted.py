"""The ranker's encoder pass with chunks batched shortest first (as shipped) against batched in
document order (as before): seconds (wall and CPU, interleaved, median), the share of padded
positions, and whether the ranking vectors and the top 3 for a question stay the same. Documents:
the 8K and 32K synthetic bench documents, and ~32K tokens of this machine's Debian copyright files
(real text, lines of every length).
    python scripts/research/probe_length_sorted.py [rounds]"""
import statistics
import sys
import time
from pathlib import Path

import torch

import e2llm.model as model_module
from e2llm import E2LLM, bench

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
engine = E2LLM.from_pretrained("default")
tok = engine.decoder_tokenizer
debian = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path("/usr/share/doc").glob("*/copyright")))
docs = {"synthetic 8K": bench.make_document(tok, 8192), "synthetic 32K": bench.make_document(tok, 32768),
        "Debian copyright ~32K": tok.decode(tok(debian)["input_ids"][:32768])}
sorted_batches = model_module.length_sorted_batches
in_order = lambda lengths, bs: [list(range(i, min(i + bs, len(lengths)))) for i in range(0, len(lengths), bs)]
bs, max_len = engine.config.encoder.chunks_per_batch, engine.config.chunking.tokens_per_chunk + 2

def padded_share(texts, batches) -> float:
    lengths = [len(x) for x in engine.encoder_tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]
    padded = sum(len(rows) * max(lengths[i] for i in rows) for rows in batches(lengths, bs))
    return 1 - sum(lengths) / padded

def rank(texts):
    engine.cache.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = engine.retrieval_vectors(texts)
    return time.perf_counter() - wall, time.process_time() - cpu, vectors

print("| document | chunks | padded positions, in order / sorted | wall s, in order / sorted | CPU s, in order / sorted | "
      "speed-up (wall, CPU) | max abs diff of vectors | same top 3 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
for name, doc in docs.items():
    texts = [c.text for c in engine.chunk(doc)]
    runs = {"in order": in_order, "sorted": sorted_batches}
    times, vectors = {k: ([], []) for k in runs}, {}
    for r in range(rounds + 1):  # the first round warms up
        for label, batches in runs.items():
            model_module.length_sorted_batches = batches
            wall, cpu, vectors[label] = rank(texts)
            if r:
                times[label][0].append(wall)
                times[label][1].append(cpu)
    model_module.length_sorted_batches = sorted_batches
    q = engine.retrieval_vectors(["Which licence covers the documentation, and who holds the copyright?"])[0]
    top = {k: set((v @ q).argsort(descending=True)[:3].tolist()) for k, v in vectors.items()}
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}
    print(f"| {name} | {len(texts)} | {padded_share(texts, in_order):.1%} / {padded_share(texts, sorted_batches):.1%} | "
          f"{med['in order'][0]:.3f} / {med['sorted'][0]:.3f} | {med['in order'][1]:.3f} / {med['sorted'][1]:.3f} | "
          f"{med['in order'][0] / med['sorted'][0]:.2f}x, {med['in order'][1] / med['sorted'][1]:.2f}x | "
          f"{(vectors['in order'] - vectors['sorted']).abs().max().item():.4f} | {top['in order'] == top['sorted']} |")
