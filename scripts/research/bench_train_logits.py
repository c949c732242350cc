"""Training loss, side by side: the old layout (right padding; logits at the union of every
sample's answer positions) against the trainer's (left padding; logits for the last n positions
only), on 8 reconstruction + 8 QA samples of the real default models, forward + backward.

    python scripts/research/bench_train_logits.py

The change was made for GPU memory: with micro-batches of 64 the union of answer positions
made float32 logits of 35-60 GB per process. On the 2-core CPU its commit (df0d829) cited
1.10x faster; two re-runs on the shipped checkpoint printed the same loss per token (3.234783
both ways) and 0.97x and 0.86x (min over 3 repeats, which ranged 18-35 s): no CPU speed-up,
perhaps a small loss. The memory reason stands; the speed claim does not.
"""
import time

import torch.nn.functional as F
from e2llm import E2LLM
from e2llm.softprompts import SoftPrompts
from e2llm.splice import IGNORE_INDEX, splice
from e2llm.train.config import TrainConfig
from e2llm.train.data import build_data
from e2llm.train.trainer import ObjectiveLoss, raw_passages

e = E2LLM.from_pretrained("default")
cfg = TrainConfig.model_validate({"data": {"builtin": {"num_qa_train": 16, "num_recon_train": 16, "qa_context_tokens": [256, 2048],
      "qa_kinds": ["single_fact", "two_chunk", "topic", "multi_fact", "aggregation"], "hybrid_top_n": 2}}})
d = build_data(cfg.data, e.config.prompt.reconstruct_question)
samples = d.recon_train[:8] + d.reason_train[:8]
for n, p in e.named_parameters():
    p.requires_grad_("lora_" in n or n.startswith("adapter."))

def old(samples):
    chunk_lists = e.chunk_many([s.context for s in samples])
    vectors = e.soft_prompts([c.text for cl in chunk_lists for c in cl])
    pieces, start = [], 0
    for s, cl in zip(samples, chunk_lists):
        groups = SoftPrompts(vectors[start:start + len(cl)], cl).groups(); start += len(cl)
        pieces.append(e.layout.pieces(e.layout.ids(s.prompt, raw_passages(e, s, cl)), groups, e.layout.answer_ids(s.answer)))
    batch = splice(pieces, e._decoder_base.get_input_embeddings(), pad_left=False)
    labels = batch.labels[:, 1:]
    keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
    logits = e.decoder(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, logits_to_keep=keep).logits
    target = labels[:, keep]
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return ce.view(target.shape).sum(1), (target != IGNORE_INDEX).sum(1), logits.shape

new_fn = ObjectiveLoss(e)
def new(samples):
    ce, n = new_fn(samples)
    return ce, n, None

times = {"old": [], "new": []}
for rep in range(3):
    for name, fn in (("old", old), ("new", new)):
        e.cache.clear()
        t = time.perf_counter(); ce, n, shape = fn(samples); ce.sum().backward(); times[name].append(time.perf_counter() - t)
        if rep == 0:
            print(name, "loss/token", float(ce.sum().detach() / n.sum()), "logits", shape)
for k, v in times.items():
    print(k, "forward+backward s:", [round(x, 2) for x in v], "min", round(min(v), 2))
print("speed-up (min/min): %.2fx" % (min(times["old"]) / min(times["new"])))
