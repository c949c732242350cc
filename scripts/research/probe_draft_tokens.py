"""How many drafted tokens a pass pays: the answers to the held-out items, 7 a task (38; 2K documents), decoded on the fast path
with engine.draft_tokens = 0, 4, 8 (shipped), 16, interleaved per item; ms a token after the first, summed.
    python scripts/research/probe_draft_tokens.py"""
import dataclasses

from e2llm import E2LLM
from e2llm.bench import _StepClock
from e2llm.eval.tasks import TASKS, synthetic_items

engine = E2LLM.from_pretrained("default")
pool, _ = synthetic_items(TASKS, [2048], items_per_task=7)
choices = (0, 4, 8, 16)
totals = {k: [0.0, 0] for k in choices}
texts = {k: [] for k in choices}
for i, item in enumerate(pool[:40]):
    spliced = engine._splice([engine._prepare(item.question, item.context, max_new_tokens=32, overflow="truncate")])
    settings = engine._gen_kwargs(32, False, 1.0, 1.0, item.stop)
    for k in choices:
        for _ in range(2 if i == 0 else 1):  # the first item twice: warm-up
            clock = _StepClock()
            out = engine._run_generate(spliced, dataclasses.replace(settings, draft_tokens=k), streamer=clock)
        texts[k].append(out[0].tolist())
        if len(clock.times) > 1:
            totals[k][0] += clock.times[-1] - clock.times[0]
            totals[k][1] += len(clock.times) - 1
for k, (seconds, n) in totals.items():
    same = sum(a == b for a, b in zip(texts[k], texts[0]))
    print(f"draft_tokens={k}: {1000 * seconds / max(1, n):.1f} ms a token over {n} tokens; "
          f"tokens identical to one a pass on {same}/{len(texts[0])}")
