"""Probe: can the encoder + adapter learn to write soft tokens the *plain* decoder already half
reads? Fresh k-token adapter and encoder LoRA, trained by regression (MSE) onto the means of the
decoder's token embeddings (scripts/research/probe_mean_embeddings.py), with no decoder in the loop,
then read by the decoder with its LoRA off on held-out reconstruction:

    python scripts/research/probe_distill_means.py [K] [STEPS]      # default 16 200

Prints the held-out loss (nats/token) with the chunk's own soft tokens, another chunk's, and
none, for the distilled adapter and for the means it imitates.
"""
import sys
import time

import torch
import torch.nn.functional as F

from e2llm import E2LLM
from e2llm.eval.systems import decoder_lora
from e2llm.train.trainer import ObjectiveLoss, mean_loss
from probe_mean_embeddings import embedding_means, heldout_recon_data, recon_losses

if len(sys.argv) > 3 or not all(a.isdigit() and int(a) > 0 for a in sys.argv[1:]):
    sys.exit("usage: python scripts/research/probe_distill_means.py [K] [STEPS]   (positive integers, default 16 200)")
k = int(sys.argv[1]) if len(sys.argv) > 1 else 16
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
torch.manual_seed(0)
config = E2LLM.from_pretrained("default").config.model_copy(deep=True)
config.adapter.tokens_per_chunk = k
engine = E2LLM.build(config)  # fresh adapter and LoRAs (a fresh decoder LoRA changes nothing)
data = heldout_recon_data(engine, 1600)
rms = engine.config.adapter.output_rms

train_chunks = [c.text for s in data.recon_train for c in engine.chunk(s.context)]
params = [{"params": list(engine.adapter.parameters()), "lr": 2e-3},
          {"params": [p for n, p in engine.encoder.named_parameters() if "lora_" in n], "lr": 3e-4}]
for group in params:
    for p in group["params"]:
        p.requires_grad_(True)
opt = torch.optim.AdamW(params, weight_decay=0.0)
engine.train()
start = time.time()
gen = torch.Generator().manual_seed(1)
for step in range(1, steps + 1):
    batch = [train_chunks[i] for i in torch.randint(len(train_chunks), (16,), generator=gen).tolist()]
    target = embedding_means(engine, batch, k)  # (16, k, Dd)
    loss = F.mse_loss(engine.soft_prompts(batch).float(), target) / rms**2  # 1 = as far as a zero vector
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 25 == 0 or step == 1:
        print(f"step {step}: regression loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
engine.eval()
engine.cache.clear()

val, learned = data.recon_val, engine.soft_prompts
with torch.no_grad(), decoder_lora(engine, False):
    print(f"\nk={k}, {steps} steps, {len(val)} held-out texts, plain decoder; no soft tokens: "
          f"{mean_loss(ObjectiveLoss(engine), val, False):.3f} nats/token")
    print("| soft tokens | own chunk's | another chunk's |\n|---|---:|---:|")
    for name, fn in (("distilled adapter", lambda texts: learned(texts, False)),
                     ("the means it imitates", lambda texts: embedding_means(engine, texts, k))):
        own, other = recon_losses(engine, val, fn)
        print(f"| {name} | {own:.3f} | {other:.3f} |", flush=True)
