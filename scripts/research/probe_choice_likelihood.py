"""Probe: do the soft prompts carry what a multiple-choice question needs, when the decoder is
not asked to write the answer but to score each choice (log-likelihood of the choice's tokens
and end of turn, summed or per token)? Topic and aggregation items on seeds the evaluation does
not use, read compressed only (e2llm), hybrid (+2 raw chunks) and with no context.

    python scripts/research/probe_choice_likelihood.py 4096,16384 8     # lengths, items per task
"""
import sys
import time

import torch

from e2llm import E2LLM
from e2llm.eval.systems import decoder_lora
from e2llm.eval.tasks import synthetic_items
from e2llm.train.data import Sample
from e2llm.train.trainer import ObjectiveLoss

PROBE_SEED = 777000  # not an evaluation seed: the scoring rule is not chosen on eval items

engine = E2LLM.from_pretrained("default")
loss = ObjectiveLoss(engine)  # per-sample summed cross-entropy of the answer, the training loss
lengths = [int(x) for x in sys.argv[1].split(",")]
items, _ = synthetic_items(["topic", "aggregation"], lengths, [0.5], int(sys.argv[2]), seed=PROBE_SEED)
hits: dict = {}
start = time.time()
for item in items:
    for system in ("e2llm", "hybrid", "none"):
        samples = [Sample("reason", item.context, item.question, c, raw_top_n=2 if system == "hybrid" else 0) for c in item.choices]
        with torch.no_grad(), decoder_lora(engine, system != "none"):  # no context: the plain decoder, as in e2llm eval
            ce, n = loss(samples, with_context=system != "none")
        for rule, score in (("sum", -ce), ("per-token", -ce / n)):
            hits.setdefault((item.task, item.length, system, rule), []).append(int(score.argmax()) == item.answer_index)
    print(f"{item.item_id} ({time.time() - start:.0f} s)", flush=True)
print("\n| task | length | system | rule | right |\n|---|---:|---|---|---:|")
for (task, length, system, rule), ok in sorted(hits.items()):
    print(f"| {task} | {length // 1024}K | {system} | {rule} | {sum(ok)}/{len(ok)} |")
