"""Issue 32: is the plain decoder's low real_field score (runs/real-field64, system `full`) the
evaluation's stop at a blank line? It often begins "The changelog entry ... is:" and a blank
line. The same items, the plain instruct decoder (LoRA off) given the whole text as the
evaluation gives it, 64 new tokens, with and without that stop.
    python scripts/research/plain_decoder_no_stop.py runs/real-field64 [LENGTH]
"""
import sys

from e2llm import E2LLM
from e2llm.eval.metrics import contains_answer
from e2llm.eval.tasks import SYNTHETIC_STOP, load_run, run_items
from e2llm.lora_switch import decoder_lora

run_dir, length = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 512
engine = E2LLM.from_pretrained("default")
items = [i for i in run_items(load_run(run_dir)) if i.length == length]
right = {"stop at a blank line": 0, "no stop": 0}
with decoder_lora(engine, False):
    for item in items:
        for label, stop in (("stop at a blank line", list(SYNTHETIC_STOP)), ("no stop", None)):
            text = engine.generate(item.question, None, raw_texts=[item.context], max_new_tokens=64, stop=stop)
            right[label] += int(contains_answer(text, item.answers))
        print(repr(text[:120]))
print(f"plain decoder, whole text, real_field at {length}: " +
      ", ".join(f"{k} {v}/{len(items)}" for k, v in right.items()))
