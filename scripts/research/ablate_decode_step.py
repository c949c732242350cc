"""What each part of a one-token lean decode step costs: the step with a part left out (answers are wrong then;
only the time counts), interleaved, median of 5 runs of 32 steps. Flags: norm (no RMSNorm), mulonly (RMSNorm as
one multiply), nomean (RMSNorm without its reduction), fused (torch.rms_norm), rot (no rotary), cache (no cache
write), attn (no attention), mlp (no SiLU gate).   python scripts/research/ablate_decode_step.py"""
import statistics
import types

import torch
from torch.nn import functional as F

from e2llm import lean as L
from lean_steps import lean_decoder, step_loop

engine, lean = lean_decoder()
FLAGS = set()
def rms(x, norm):
    if "mulonly" in FLAGS:
        return x * norm.weight
    if "nomean" in FLAGS:
        h = x.float()
        return norm.weight * (h * 0.5).to(x.dtype)
    if "fused" in FLAGS:
        return torch.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    if "bmm" in FLAGS:
        h = x.float()
        ms = torch.matmul(h.unsqueeze(-2), h.unsqueeze(-1)).squeeze(-1) / h.shape[-1]
        return norm.weight * (h * torch.rsqrt(ms + norm.variance_epsilon)).to(x.dtype)
    if "vn" in FLAGS:
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        return norm.weight * (x.float() * torch.rsqrt(n * n / x.shape[-1] + norm.variance_epsilon)).to(x.dtype)
    return L._rms_norm(x, norm)
def _layers(self, x, pos, start, mask):
    B, T, _ = x.shape
    H, KV, hd = self.num_heads, self.num_kv_heads, self.head_dim
    cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
    end = start + T
    for i, (qkv, o, gate_up, down) in enumerate(zip(self.qkv, self.o, self.gate_up, self.down)):
        norm_in, norm_post = self.norms[i]
        xn = x if "norm" in FLAGS else rms(x, norm_in)
        h = qkv(xn).view(B, T, H + 2 * KV, hd).transpose(1, 2)
        qk, v = h[:, :H + KV], h[:, H + KV:]
        if "rot" not in FLAGS:
            half = hd // 2
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rotated * sin
        if "cache" not in FLAGS:
            self.cache_k[i][:, :, start:end] = qk[:, H:]
            self.cache_v[i][:, :, start:end] = v
        keys, values = self.cache_k[i][:, :, :end], self.cache_v[i][:, :, :end]
        q = qk[:, :H]
        if "attn" in FLAGS:
            att = q.reshape(B, H, 1, hd)
        else:
            att = F.scaled_dot_product_attention(q.reshape(B, KV, H // KV, hd), keys, values, scale=self.scaling)
            att = att.reshape(B, H, 1, hd)
        x = x + o(att.transpose(1, 2).reshape(B, T, H * hd))
        xn = x if "norm" in FLAGS else rms(x, norm_post)
        if "mlp" in FLAGS:
            x = x + down(gate_up(xn)[..., :1536])
        else:
            g, u = gate_up(xn).chunk(2, dim=-1)
            x = x + down(F.silu(g) * u)
    return L._rms_norm(x, self.norm)
orig = lean._layers
lean._layers = types.MethodType(lambda self, x, pos, start, mask: _layers(self, x, pos, start, mask) if x.shape[1] == 1 else orig(x, pos, start, mask), lean)
loop = step_loop(lean)


def run(steps=32):
    return loop(steps)[0]


variants = [(), ("norm",), ("mulonly",), ("nomean",), ("fused",), ("rot",), ("cache",), ("attn",), ("mlp",),
            ("norm", "rot", "cache", "attn", "mlp")]
for v in variants: FLAGS.clear(); FLAGS.update(v); run(8)
res = {v: [] for v in variants}
for _ in range(5):
    for v in variants:
        FLAGS.clear(); FLAGS.update(v); res[v].append(run())
base = statistics.median(res[()])
for v in variants: print(v or "all", f"{statistics.median(res[v]):.1f} ms (saves {base - statistics.median(res[v]):.1f})")
