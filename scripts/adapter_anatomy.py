"""Where in the attention-pooling adapter do the chunks' soft prompts become alike?

Runs held-out chunks through a checkpoint's ``pma`` adapter step by step and prints, after
each step, the RMS of the vectors and their spread (``e2llm.softprompts.spread``: the share
of their energy that differs between chunks; 0 = every chunk gets the same vector). A step
whose output is large and has a low spread adds a near-constant vector that the LayerNorm
after it then scales the content away against.

    python scripts/adapter_anatomy.py [CHECKPOINT] [NUM_CHUNKS]   # default, 96
    (CHECKPOINT "untrained": the default models with a freshly initialised adapter and LoRAs)
"""
import sys

import torch
import torch.nn.functional as F

from e2llm import E2LLM
from e2llm.adapter import PMAAdapter
from e2llm.eval.tasks import heldout_documents
from e2llm.softprompts import spread


def steps(adapter: PMAAdapter, states: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """PMAAdapter.forward, keeping every intermediate: (N, k, Dd) each."""
    a, (N, L, _) = adapter, states.shape
    H, Dd = a.num_heads, a.queries.shape[-1]
    q = a.q_proj(a.queries).view(1, a.k, H, Dd // H).transpose(1, 2).expand(N, H, a.k, Dd // H)
    kv = a.kv_proj(states).view(N, L, 2, H, Dd // H).permute(2, 0, 3, 1, 4)  # (2, N, H, L, Dh)
    x = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask.bool()[:, None, None, :])
    x = a.o_proj(x.transpose(1, 2).reshape(N, a.k, Dd))  # (N, k, Dd)
    h = a.norm1(a.queries + x)
    f = a.ffn(h)
    return {"attention output": x, "queries + attention": a.queries + x, "norm1": h,
            "ffn(norm1)": f, "norm1 + ffn": h + f, "norm2 (soft prompt)": a.norm2(h + f)}


def main(argv: list[str]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and not argv[1].isdigit()):
        sys.exit("usage: python scripts/adapter_anatomy.py [CHECKPOINT|untrained] [NUM_CHUNKS]")
    checkpoint = argv[0] if argv else "default"
    num_chunks = int(argv[1]) if len(argv) == 2 else 96
    if checkpoint == "untrained":
        torch.manual_seed(0)
        engine = E2LLM.build(E2LLM.from_pretrained("default").config)
    else:
        engine = E2LLM.from_pretrained(checkpoint)
    if not isinstance(engine.adapter, PMAAdapter):
        sys.exit(f"{checkpoint}: its adapter is {engine.config.adapter.kind!r}; this script reads 'pma' adapters")
    chunks = []
    for doc in heldout_documents():
        chunks += engine.chunk(doc.text)[:8]  # a few chunks from each of many documents
        if len(chunks) >= num_chunks:
            break
    texts = [c.text for c in chunks[:num_chunks]]
    with torch.no_grad():
        batches = list(engine._encoder_batches(texts, grad=False))
        width = max(s.shape[1] for s, _ in batches)
        states = torch.cat([F.pad(s.float(), (0, 0, 0, width - s.shape[1])) for s, _ in batches])  # (N, L, De)
        mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in batches])  # (N, L)
        parts = steps(engine.adapter.float(), states, mask)
    print(f"{checkpoint}: {len(texts)} held-out chunks")
    print(f"{'step':22s} {'RMS':>8s} {'spread':>8s}")
    for name, v in parts.items():
        print(f"{name:22s} {float(v.pow(2).mean().sqrt()):8.3f} {float(spread(v)):8.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
