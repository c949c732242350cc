"""What a training step trains and how hard it works the machine: target tokens (running total,
exact after a resume) and the step's achieved matrix-multiply rate against the machine's own
measured peak (``e2llm bench encode`` measures the same peak).

The FLOP count is an estimate of the products only: a linear layer of P weights costs 2·P
FLOPs a token forward, and again 2·P backward for the input gradient (the backbones are frozen,
so there is no weight gradient but LoRA's, which is negligible); the LM head runs only on the
answer positions (``logits_to_keep``). Padded positions count, since they are computed.
Attention's own products (quadratic in the length) are left out: at 64-token chunks and a few
hundred decoder tokens they are a few percent.
"""
from __future__ import annotations

import torch
from torch import nn


def linear_weights(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Weights of the module's linear layers (LoRA's small ones included), minus those named in skip."""
    return sum(m.weight.numel() for name, m in module.named_modules()
               if isinstance(m, nn.Linear) and not any(name.endswith(s) for s in skip))


class StepMeter:
    def __init__(self, engine, batches, start_step: int, world: int, dtype: torch.dtype):
        from ..meters import matmul_peak_gflops

        enc = engine.encoder.get_base_model() if hasattr(engine.encoder, "get_base_model") else engine.encoder
        dec = engine._decoder_base
        self.enc_weights = linear_weights(enc)
        self.dec_weights = linear_weights(dec, skip=("lm_head",))
        head = dec.get_output_embeddings()
        self.head_weights = head.weight.numel() if head is not None else 0
        self.world, self.dtype = world, dtype
        # every process's target tokens of the steps before the start: a pure function of the step
        self.tokens_total = sum(_step_tokens(batches, s) for s in range(start_step))
        self.peak_gflops = matmul_peak_gflops(dtype)

    def flops(self, part: dict) -> float:
        """Estimated FLOPs of one collated micro-batch, forward and backward (see the module docstring)."""
        enc_tokens = part["enc_ids"].numel()  # (n, L) padded
        dec_tokens = part["dec_ids"].numel()  # (B, T) padded
        head_tokens = part["dec_ids"].shape[0] * (part["max_answer"] + 1)
        return 4.0 * (self.enc_weights * enc_tokens + self.dec_weights * dec_tokens + self.head_weights * head_tokens)

    def step(self, parts: list, target_tokens: float, seconds: float) -> dict:
        """The log fields of a step: tokens so far, GFLOP/s achieved, share of the measured peak."""
        self.tokens_total += int(target_tokens)
        gflops = self.world * sum(self.flops(p) for p in parts if p is not None) / max(seconds, 1e-9) / 1e9
        return {"train_tokens": self.tokens_total, "gflops": round(gflops, 1),
                "peak_share": round(gflops / (self.world * self.peak_gflops), 3)}

    def describe(self) -> str:
        from ..devices import cpu_line

        return (f"{cpu_line()}; matmul peak {self.peak_gflops:.0f} GFLOP/s a process ({str(self.dtype).replace('torch.', '')}); "
                f"linear weights: encoder {self.enc_weights / 1e6:.1f}M, decoder {self.dec_weights / 1e6:.1f}M + head "
                f"{self.head_weights / 1e6:.1f}M")


def _step_tokens(batches, step: int) -> int:
    rows = batches.step_rows(step)
    return int(sum(int((batches.recon if kind == 0 else batches.reason).answer_tokens[r]) for kind, r in rows))
