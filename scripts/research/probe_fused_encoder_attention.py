"""The ranker's pass at 8K with the bf16 encoder copy as shipped (three q/k/v products, flash SDPA) against
the same copy with one fused q/k/v product and attention as matmul, softmax, matmul (scale folded into
the query weights): seconds (process CPU time, interleaved, median), the largest change in the ranking
vectors, and torch.profiler's operator table for each.
    python scripts/research/probe_fused_encoder_attention.py [rounds]"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from e2llm import E2LLM, bench
from e2llm.decoding import build_inference_copy


class FusedSelfAttention(nn.Module):
    """A BertSelfAttention's arithmetic: one (3HD, D) product, then attention without SDPA."""

    def __init__(self, attn):
        super().__init__()
        self.H, self.D, s = attn.num_attention_heads, attn.attention_head_size, attn.scaling
        self.w = nn.Parameter(torch.cat([attn.query.weight * s, attn.key.weight, attn.value.weight]), requires_grad=False)
        self.b = nn.Parameter(torch.cat([attn.query.bias * s, attn.key.bias, attn.value.bias]), requires_grad=False)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        B, L, _ = hidden_states.shape
        q, k, v = F.linear(hidden_states, self.w, self.b).view(B, L, 3, self.H, self.D).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2)  # (B, H, L, L)
        if attention_mask is not None:  # bool, True where a key may be read
            scores.masked_fill_(~attention_mask, float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, self.H * self.D), None


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
engine = E2LLM.from_pretrained("default")
texts = [c.text for c in engine.chunk(bench.make_document(engine.decoder_tokenizer, 8192))]


def rank():
    engine.cache.clear()
    start = time.process_time()
    vectors = engine.retrieval_vectors(texts)
    return time.process_time() - start, vectors


rank()  # builds the shipped copy (the ranker's: LoRA left out)
copies = engine._encoder_copies
key = next(iter(copies._copies))
version, shipped = copies._copies[key]
with engine.encoder.disable_adapter():
    fused = build_inference_copy(engine.encoder, False, torch.bfloat16, pack=False, fuse_gelu=True)
for m in fused.modules():
    if type(getattr(m, "self", None)).__name__ == "BertSelfAttention":
        m.self = FusedSelfAttention(m.self)
variants, times, vectors = {"shipped (SDPA)": shipped, "fused q/k/v, matmul-softmax-matmul": fused}, {}, {}
for _ in range(rounds):
    for name, model in variants.items():
        copies._copies[key] = (version, model)
        t, vectors[name] = rank()
        times.setdefault(name, []).append(t)
for name in variants:
    print(f"{name}: {statistics.median(times[name]):.3f} CPU s (median of {rounds})")
a, b = vectors.values()
print(f"largest change in a ranking vector: {(a - b).abs().max().item():.4f}")
for name, model in variants.items():
    copies._copies[key] = (version, model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rank()
    print(name)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
copies._copies[key] = (version, shipped)
