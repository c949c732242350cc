"""A lean forward for Llama-family decoders at inference: the same weights and arithmetic as
transformers' Llama/Mistral/Qwen2 modules, without their per-call generality.

Why: at one token a step the 135M default decoder spends ~12 ms in its weight products (the
memory-bandwidth floor of bf16 weights here) and as much again in the ~2,000 small ops and
Python of the general forward (mask building, cache bookkeeping, three q/k/v and two gate/up
products per layer). This module fuses q/k/v and gate/up into one product each, applies
rotary embeddings to q and k at once, writes keys and values into a pre-allocated cache and
attends over its filled part only. docs/speed.md has the measurement.

It runs only where its arithmetic is the model's own (``supports``); any other decoder goes
through transformers. tests/test_decoding.py checks greedy tokens and logits against
transformers' forward in float32, with left-padded batches.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .packed import PackedLinear  # the packed bf16 product where the copy uses it

_FAMILIES = {"llama", "mistral", "qwen2"}


def supports(model: nn.Module) -> bool:
    """True for a plain Llama-family causal LM whose forward this module reproduces exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _FAMILIES:
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral"):
        return False  # a sliding window changes the mask; leave it to transformers
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) and hasattr(model, "lm_head")


def _fuse(linears: list[nn.Module]) -> nn.Module:
    """One product for several that read the same input: their weights stacked by output rows."""
    weight = torch.cat([m.weight for m in linears], dim=0)
    biases = [m.bias for m in linears]
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=biases[0] is not None, dtype=weight.dtype, device=weight.device)
    fused.weight.data.copy_(weight)
    if fused.bias is not None:
        fused.bias.data.copy_(torch.cat(biases))
    fused.requires_grad_(False)
    return PackedLinear(fused, dtype=weight.dtype) if isinstance(linears[0], PackedLinear) else fused


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    # transformers' LlamaRMSNorm, step for step: float32 statistics, back to the input dtype, then the weight
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


class LeanDecoder(nn.Module):
    """Prefill and one-token steps on a pre-allocated KV cache for a :func:`supports` model.

    Holds the model's own norm, o/down, embedding and head modules and fused q/k/v and
    gate/up products (the model's separate ones are dropped, so memory stays one copy)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        cfg, inner = model.config, model.model
        self.config = cfg
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.embed, self.rotary, self.norm, self.lm_head = inner.embed_tokens, inner.rotary_emb, inner.norm, model.lm_head
        self.qkv, self.o, self.gate_up, self.down, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.qkv.append(_fuse([att.q_proj, att.k_proj, att.v_proj]))
            self.gate_up.append(_fuse([mlp.gate_proj, mlp.up_proj]))
            self.o.append(att.o_proj)
            self.down.append(mlp.down_proj)
            self.norms.append((layer.input_layernorm, layer.post_attention_layernorm))
            del att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj  # the fused copies replace them
        self.scaling = self.head_dim ** -0.5
        self.cache_k: list[torch.Tensor] = []
        self.cache_v: list[torch.Tensor] = []

    # ---------------------------------------------------------------- cache and positions
    def _start(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, self.num_kv_heads, max_len, self.head_dim)  # (B, KV, L, hd)
        self.cache_k = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.qkv]
        self.cache_v = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.qkv]
        positions = torch.arange(max_len, device=device)[None]
        cos, sin = self.rotary(torch.empty(0, dtype=dtype, device=device), positions)  # (1, L, hd) each
        self.cos, self.sin = cos[0], sin[0]  # (L, hd)

    def _layers(self, x: torch.Tensor, pos: torch.Tensor, start: int, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, D) at cache slots start..start+T-1, rotary positions pos (B, T); mask (B, 1, T, start+T) or None."""
        B, T, _ = x.shape
        H, KV, hd = self.num_heads, self.num_kv_heads, self.head_dim
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, T, hd)
        end = start + T
        for i, (qkv, o, gate_up, down) in enumerate(zip(self.qkv, self.o, self.gate_up, self.down)):
            norm_in, norm_post = self.norms[i]
            h = qkv(_rms_norm(x, norm_in)).view(B, T, H + 2 * KV, hd).transpose(1, 2)  # (B, H+2KV, T, hd)
            qk, v = h[:, :H + KV], h[:, H + KV:]
            half = hd // 2
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)  # rotate_half, q and k at once
            qk = qk * cos + rotated * sin
            self.cache_k[i][:, :, start:end] = qk[:, H:]
            self.cache_v[i][:, :, start:end] = v
            keys, values = self.cache_k[i][:, :, :end], self.cache_v[i][:, :, :end]  # (B, KV, end, hd)
            q = qk[:, :H]
            if T == 1:  # one query per head: the heads sharing a KV head become rows of one product
                att = F.scaled_dot_product_attention(q.reshape(B, KV, H // KV, hd), keys, values, scale=self.scaling,
                                                     attn_mask=None if mask is None else mask[:, :, -1:])
                att = att.reshape(B, H, 1, hd)
            else:
                att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling,
                                                     is_causal=mask is None, enable_gqa=H != KV)
            x = x + o(att.transpose(1, 2).reshape(B, T, H * hd))
            g, u = gate_up(_rms_norm(x, norm_post)).chunk(2, dim=-1)
            x = x + down(F.silu(g) * u)
        return _rms_norm(x, self.norm)

    # ---------------------------------------------------------------- the two entry points
    @torch.no_grad()
    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> torch.Tensor:
        """(B, T, D) left-padded embeddings, (B, T) mask -> (B, V) logits of the last position."""
        B, T, _ = inputs_embeds.shape
        dtype = self.embed.weight.dtype
        self._start(B, max_len, dtype, inputs_embeds.device)
        valid = attention_mask.bool()
        self.valid = torch.zeros(B, max_len, dtype=torch.bool, device=valid.device)
        self.valid[:, :T] = valid
        self.next_pos = valid.sum(-1, keepdim=True)  # (B, 1) rotary position of the next token
        self.length = T
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T) as transformers' generate
        mask = None
        if not bool(valid.all()):
            causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
            # a padded row attends to itself only, so no row is all -inf (NaN would reach its keys)
            mask = (causal & valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=valid.device)
            mask = mask[:, None]  # (B, 1, T, T)
        h = self._layers(inputs_embeds.to(dtype), pos, 0, mask)
        return self.lm_head(h[:, -1:])[:, 0].float()

    @torch.no_grad()
    def extend(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids after the cache -> (B, T, V) logits at each; appends T positions.
        Checks drafted tokens in one pass: the weights are read once for all T rows."""
        B, T = ids.shape
        start = self.length
        self.valid[:, start:start + T] = True
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
        mask = torch.cat([self.valid[:, None, :start].expand(B, T, start), causal.expand(B, T, T)], dim=-1)[:, None]  # (B, 1, T, start+T)
        pos = self.next_pos + torch.arange(T, device=ids.device)  # (B, T)
        h = self._layers(self.embed(ids), pos, start, mask)
        self.next_pos = self.next_pos + T
        self.length += T
        return self.lm_head(h).float()

    def rewind(self, n: int) -> None:
        """Forget the last n positions (drafted tokens not accepted); later calls overwrite their slots."""
        if n:
            self.length -= n
            self.next_pos = self.next_pos - n
            self.valid[:, self.length:] = False

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) next token ids -> (B, V) logits; appends to the cache."""
        B, start = ids.shape[0], self.length
        self.valid[:, start] = True
        mask = None if bool(self.valid[:, :start + 1].all()) else self.valid[:, None, None, :start + 1]
        h = self._layers(self.embed(ids[:, None]), self.next_pos, start, mask)
        self.next_pos = self.next_pos + 1
        self.length += 1
        return self.lm_head(h)[:, 0].float()
