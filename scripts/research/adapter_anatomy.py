"""Where in the attention-pooling adapter do the chunks' soft prompts become alike?

Runs held-out chunks through a checkpoint's ``pma`` adapter step by step and prints, after
each step, the RMS of the vectors and their spread (``e2llm.softprompts.spread``: the share
of their energy that differs between chunks; 0 = every chunk gets the same vector). A step
whose output is large and has a low spread adds a near-constant vector that the LayerNorm
after it then scales the content away against.

    python scripts/research/adapter_anatomy.py [CHECKPOINT] [NUM_CHUNKS]   # default, 96
    (CHECKPOINT "untrained": the default models with a freshly initialised adapter and LoRAs)
"""
import sys

import torch

from e2llm import E2LLM
from e2llm.adapter import PMAAdapter
from e2llm.eval.tasks import heldout_documents
from e2llm.softprompts import spread


STEP_NAMES = ("attention output", "queries + attention", "norm1", "ffn(norm1)", "norm1 + ffn", "norm2 (soft prompt)")


def steps(engine: E2LLM, texts: list[str]) -> dict[str, torch.Tensor]:
    """The soft prompts of ``texts`` with what each step of the engine's PMAAdapter gave on
    the way, caught by forward hooks on its submodules (so this reads the adapter's own
    forward pass, not a copy of it): (N, k, Dd) each."""
    a = engine.adapter
    caught: dict[str, list[torch.Tensor]] = {name: [] for name in STEP_NAMES}

    def keep(name, use_input=False):
        return lambda module, inputs, output: caught[name].append((inputs[0] if use_input else output).detach().float())

    handles = [a.o_proj.register_forward_hook(keep("attention output")),
               a.norm1.register_forward_hook(keep("queries + attention", use_input=True)),
               a.norm1.register_forward_hook(keep("norm1")),
               a.ffn.register_forward_hook(keep("ffn(norm1)")),
               a.norm2.register_forward_hook(keep("norm1 + ffn", use_input=True)),
               a.norm2.register_forward_hook(keep("norm2 (soft prompt)"))]
    try:
        with torch.no_grad():
            engine.soft_prompts(texts, encoder_grad=False)  # the adapter runs once per encoder batch
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts) for name, parts in caught.items()}


def main(argv: list[str]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and not argv[1].isdigit()):
        sys.exit("usage: python scripts/research/adapter_anatomy.py [CHECKPOINT|untrained] [NUM_CHUNKS]")
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
    parts = steps(engine, texts)
    print(f"{checkpoint}: {len(texts)} held-out chunks")
    print(f"{'step':22s} {'RMS':>8s} {'spread':>8s}")
    for name, v in parts.items():
        print(f"{name:22s} {float(v.pow(2).mean().sqrt()):8.3f} {float(spread(v)):8.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
