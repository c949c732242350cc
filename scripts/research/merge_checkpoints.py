"""Combine the parts of two checkpoints: the decoder LoRA of one, the adapter and encoder LoRA
of the other (the research log's (docs/research-log.md) "v1 decoder + frozen-decoder adapter" ablations start from this).

    python scripts/research/merge_checkpoints.py DECODER_LORA_FROM ADAPTER_FROM OUT [--tokens-per-chunk K]

The config (prompt, raw_top_n, ...) comes from DECODER_LORA_FROM. With --tokens-per-chunk K
above the adapter's k, the attention-pooling adapter gets K queries: the trained ones, and new
ones started from the first plus a fresh random init (seed 0), so they can attend elsewhere.
"""
import argparse
from pathlib import Path

import torch

from e2llm.checkpoint import read_config, read_tensors, save_checkpoint
from e2llm.errors import E2LLMError

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("decoder_lora_from", type=Path)
parser.add_argument("adapter_from", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--tokens-per-chunk", type=int, default=None)
args = parser.parse_args()

try:
    config, other = read_config(args.decoder_lora_from), read_config(args.adapter_from)
    decoder_part, adapter_part = read_tensors(args.decoder_lora_from), read_tensors(args.adapter_from)
except E2LLMError as e:
    raise SystemExit(f"error: {e}") from None
for section in ("encoder", "decoder", "adapter", "chunking"):
    if getattr(config, section).model_dump(exclude={"tokens_per_chunk"}) != getattr(other, section).model_dump(exclude={"tokens_per_chunk"}):
        raise SystemExit(f"error: the two checkpoints differ in '{section}': only the trained weights can be combined")
tensors = {n: (decoder_part if n.startswith("decoder_lora.") else adapter_part)[n] for n in adapter_part}

k_old = other.adapter.tokens_per_chunk
k = k_old if args.tokens_per_chunk is None else args.tokens_per_chunk
if k < k_old:
    raise SystemExit(f"error: --tokens-per-chunk {k} is below the adapter's {k_old}: queries can be added, not removed")
if k > k_old:
    queries = tensors.get("adapter.queries")  # (k_old, Dd), attention pooling only
    if queries is None:
        raise SystemExit(f"error: --tokens-per-chunk needs an attention-pooling (pma) adapter; {args.adapter_from} has '{other.adapter.kind}'")
    dim = queries.shape[-1]
    fresh = queries[:1].float() + torch.randn(k - k_old, dim, generator=torch.Generator().manual_seed(0)) * dim**-0.5
    tensors["adapter.queries"] = torch.cat([queries.float(), fresh]).to(queries.dtype)
config.adapter = other.adapter.model_copy(update={"tokens_per_chunk": k})
save_checkpoint(args.out, config, tensors)
print(f"wrote {args.out}: decoder LoRA from {args.decoder_lora_from}, adapter and encoder LoRA from {args.adapter_from}, k = {k}")
