"""The ranker's encoder pass over an 8K synthetic document (chunks of the shipped size): seconds and torch.profiler's
operator table.   python scripts/research/profile_rank_pass.py"""
import time, torch, statistics
from torch.profiler import profile, ProfilerActivity
from e2llm import E2LLM, bench
engine = E2LLM.from_pretrained("default")
doc = bench.make_document(engine.decoder_tokenizer, 8192)
chunks = engine.chunk(doc)
texts = [c.text for c in chunks]
print(len(chunks), "chunks", engine.config.encoder.chunks_per_batch, "per batch", engine.config.chunking.tokens_per_chunk)
def rank():
    engine.cache.clear()
    t = time.perf_counter(); engine.retrieval_vectors(texts); return time.perf_counter() - t
rank()
print("rank s", [round(rank(), 3) for _ in range(5)])
tok = engine.encoder_tokenizer
t = time.perf_counter(); b = tok(texts, padding=True, truncation=True, max_length=514, return_tensors="pt"); print("tokenize s", time.perf_counter() - t, b["input_ids"].shape)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    rank()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
