"""Where a training step's time goes: host-side work (chunking, templating, the splice) vs the
models, for one step of configs/gpu-k1.yaml's data mix (16 + 16 samples, micro-batches of 4),
fp32 on this machine, under cProfile.

    python scripts/profile_train_step.py
"""
import cProfile
import pstats
import time

from e2llm.train import TrainConfig, Trainer
cfg = TrainConfig.load("configs/gpu-k1.yaml")
cfg.data.builtin.num_qa_train, cfg.data.builtin.num_recon_train = 400, 400
cfg.data.builtin.num_qa_val = cfg.data.builtin.num_recon_val = 0
cfg.optim.batch_size, cfg.optim.grad_accum, cfg.optim.backbone_dtype = 16, 8, "float32"  # micro-batches of 4
cfg.output_dir = "build/profile-run"; cfg.num_generation_checks = 0
t = Trainer(cfg)
samples = t._step_samples(0)
print(len(samples), "samples")
def step():
    w = t._weights(samples)
    for idx in t._micro_batches(samples):  # the trainer's own length-sorted split
        ce, n = t.model([samples[i] for i in idx])
        (ce * w[idx]).sum().backward()
step()  # warm
pr = cProfile.Profile(); t0 = time.perf_counter(); pr.enable(); step(); pr.disable(); print("step s", time.perf_counter() - t0)
st = pstats.Stats(pr); st.sort_stats("cumulative")
keys = ["chunk_many", "ids", "answer_ids", "raw_chunk_indices", "rank_chunks", "splice", "soft_prompts", "_weights", "_approx_tokens",
        "run_backward", "forward", "__call__", "_encode_tokenized", "encode_chunks"]
for (f, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
    if name in keys and ("e2llm" in f or name == "run_backward"):
        print(f"{name:22s} {ct:7.2f}s cum  {nc:5d} calls  {f.split('/')[-1]}:{line}")
st.print_stats(25)
