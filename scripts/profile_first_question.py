"""Where a first question's time goes at 8K tokens: chunking, the encoder pass (soft prompts,
and with engine.ranking_pass "shared" the ranking vectors too), the hybrid ranking (a second
encoder pass only with ranking_pass "base"), the decoder. `e2llm bench latency` reports the
same stages side by side with full-context stuffing and RAG.

    python scripts/profile_first_question.py
"""
import time

from e2llm import E2LLM
from e2llm.train.corpus import load_corpus

engine = E2LLM.from_pretrained("default")
ids = engine.encoder_tokenizer("\n\n".join(d.text for d in load_corpus()[:80]), add_special_tokens=False)["input_ids"]
text = engine.encoder_tokenizer.decode(ids[:8100])
question = "What does the document say about exceptions?"
engine.generate(question, text[:3000], max_new_tokens=2)  # warm-up
engine.cache.clear()
t0 = time.perf_counter()
chunks = engine.chunk(text)
t1 = time.perf_counter()
engine.encode(text)
t2 = time.perf_counter()
engine.rank_chunks(question, chunks)
t3 = time.perf_counter()
engine.generate(question, text, max_new_tokens=1)  # both passes cached now: the decoder's part
t4 = time.perf_counter()
print(f"{len(chunks)} chunks: chunking {t1 - t0:.2f} s, encoder pass {t2 - t1:.2f} s, "
      f"ranking ({engine.ranking_pass}) {t3 - t2:.2f} s, decoder to the first token {t4 - t3:.2f} s")
