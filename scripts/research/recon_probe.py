"""A short reconstruction-only training probe, for comparing recipes before a long run.

    python scripts/research/recon_probe.py NAME K CHUNK_TOKENS STEPS ['{"dotted.key": value, ...}']

Trains a fresh engine for STEPS steps on the built-in corpus (reconstruction only, 8 windows
per step) into build/probes/NAME and prints the held-out reconstruction loss with and without
the soft prompts: their difference is what the soft prompts carry. The research log's (docs/research-log.md) ablation
probes are, e.g.: recon_probe.py frozen 1 64 40 '{"trainable": "adapter+encoder_lora"}'.
"""
import json
import sys
import time

from e2llm.train.config import TrainConfig
from e2llm.train.trainer import ObjectiveLoss, Trainer, mean_loss, mean_spread

if len(sys.argv) not in (5, 6):
    sys.exit("usage: python scripts/research/recon_probe.py NAME K CHUNK_TOKENS STEPS ['{\"dotted.key\": value}']")
name, k, chunk_tokens, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
cfg = {
    "model": {"chunking": {"tokens_per_chunk": chunk_tokens}, "adapter": {"kind": "pma", "tokens_per_chunk": k, "num_heads": 4}},
    "trainable": "all",
    "data": {"builtin": {"num_qa_train": 0, "num_qa_val": 0, "num_recon_train": 1600, "num_recon_val": 32}},
    "optim": {"lr": 3e-4, "adapter_lr": 2e-3, "warmup_steps": 5, "max_steps": steps, "batch_size": 8, "grad_accum": 1},
    "objective": {"reason": False, "recon_weight": 1.0},
    "output_dir": f"build/probes/{name}", "save_every": 10**6, "eval_every": 10**6, "log_every": 5, "num_generation_checks": 0,
}
for key, value in overrides.items():
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value

t0 = time.time()
trainer = Trainer(TrainConfig.model_validate(cfg))
loss_fn = ObjectiveLoss(trainer.engine)
trainer.train()
trainer.engine.cache.clear()
with_sp, without = mean_loss(loss_fn, trainer.data.recon_val, True), mean_loss(loss_fn, trainer.data.recon_val, False)
spread = mean_spread(trainer.engine, trainer.data.recon_val)
print(f"{name}: k={k} chunk={chunk_tokens} steps={steps} with={with_sp:.3f} without={without:.3f} "
      f"gap={without - with_sp:.3f} nats/token spread={spread:.3f} ({time.time() - t0:.0f} s)")
