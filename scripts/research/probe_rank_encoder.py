"""The ranker's encoder pass over a long document (default checkpoint, ranking_pass "base"):
tokenization alone, the engine's path (float32 weights with the LoRA switched off, bf16
autocast) and a bf16 copy of the base encoder without autocast; interleaved rounds, best of each.
2026-12-02, idle AMD EPYC, 32K tokens: 3.48 / 3.54 s and 3.66 / 3.64 s (autocast / copy) in two runs: no
gain, so the engine keeps autocast; a first 3.52 / 2.96 s did not reproduce.
    python scripts/research/probe_rank_encoder.py [tokens]"""
import copy
import sys
import time

import pydoc_data.topics
import torch

from e2llm import E2LLM

tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
engine = E2LLM.from_pretrained("default")
text = "\n\n".join(v.strip() for _, v in sorted(pydoc_data.topics.topics.items()))
chunks = engine.chunk(text)
while sum(c.num_tokens for c in chunks) < tokens:
    chunks = chunks + chunks
texts, total = [], 0
for c in chunks:
    if total >= tokens:
        break
    texts.append(c.text)
    total += c.num_tokens
plain = copy.deepcopy(engine.encoder)  # the base weights (the ranker runs with LoRA off), in bf16
plain = (plain.unload() if hasattr(plain, "unload") else plain).to(torch.bfloat16).eval()
bs, max_len = engine.config.encoder.chunks_per_batch, engine.config.chunking.tokens_per_chunk + 2


def tokenize():
    return [engine.encoder_tokenizer(texts[i:i + bs], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            for i in range(0, len(texts), bs)]


batches = tokenize()


def engine_path():
    engine.cache.clear()  # a fresh document each round
    return engine.retrieval_vectors(texts)


@torch.no_grad()
def bf16_copy():
    return torch.cat([engine._pool(plain(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state,
                                   b["attention_mask"]) for b in batches])


print(f"{len(texts)} chunks, {total} tokens, {bs} chunks a batch", flush=True)
best = {}
for _ in range(2):
    for name, fn in (("tokenize", tokenize), ("engine (fp32 weights, autocast)", engine_path), ("bf16 copy", bf16_copy)):
        t = time.perf_counter()
        fn()
        best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
for name, s in best.items():
    print(f"{name:34s} {s:6.2f} s")
a, b = engine_path(), bf16_copy()
print("cosine of the two rankings' vectors: min", float((a * b).sum(-1).min()))
