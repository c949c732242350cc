"""Answers to 38 held-out items (2K documents) with drafts from the prompt off (0) and on (8): seconds end to end
and whether the texts are the same.   python scripts/research/check_drafts_answers.py"""
import time, torch, sys
from e2llm import E2LLM
from e2llm.eval.tasks import TASKS, synthetic_items
engine = E2LLM.from_pretrained("default")
pool, _ = synthetic_items(TASKS, [2048], items_per_task=7)
pool = pool[:40]
res = {}
for K in (0, 8):
    engine.draft_tokens = K
    engine.generate(pool[0].question, pool[0].context, max_new_tokens=32, stop=pool[0].stop, overflow="truncate")
    t = time.perf_counter(); answers = []; ntok = 0; dec_t = 0
    for it in pool:
        r = engine.generate(it.question, it.context, max_new_tokens=32, stop=it.stop, overflow="truncate", return_result=True)
        answers.append(r.text); ntok += r.new_tokens
    res[K] = (answers, time.perf_counter() - t, ntok)
    print(K, f"{res[K][1]:.1f} s, {ntok} tokens", flush=True)
same = sum(a == b for a, b in zip(res[0][0], res[8][0]))
print("identical", same, "/", len(pool))
for a, b, it in zip(res[0][0], res[8][0], pool):
    if a != b: print(it.item_id, repr(a), repr(b))
