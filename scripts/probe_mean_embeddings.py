"""Probe: can the plain decoder read soft tokens it was never trained on, if they are made of its
own token embeddings? No training. Each held-out reconstruction text becomes soft tokens:

  k = 0   every decoder token's own embedding (the text itself, as inputs_embeds: the ceiling)
  k >= 1  k soft tokens, each the mean of the embeddings of 1/k of the text's decoder tokens,
          rescaled to the RMS of a token embedding (a learned soft prompt's scale)

and the decoder, LoRA off, is asked to repeat the document. Printed: held-out reconstruction
loss (nats/token) with the text's own soft tokens, with another text's, and with none. If the
mean of a few embeddings were readable, it would be a soft prompt that needs no decoder tuning.

    python scripts/probe_mean_embeddings.py [K,K,...]     # default 0,1,4,16
"""
import sys

import torch

from e2llm import E2LLM
from e2llm.eval.systems import decoder_lora
from e2llm.train.config import DataConfig
from e2llm.train.data import build_data
from e2llm.train.trainer import ObjectiveLoss, mean_loss

ks = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "0,1,4,16").split(",")]
engine = E2LLM.from_pretrained("default")
builtin = {"num_qa_train": 0, "num_qa_val": 0, "num_recon_train": 8, "num_recon_val": 32}
val = build_data(DataConfig.model_validate({"builtin": builtin}), engine.config.prompt.reconstruct_question).recon_val
tok = engine.decoder_tokenizer
table = engine._decoder_base.get_input_embeddings().weight.detach().float()  # (V, Dd)
rms = engine.config.adapter.output_rms


def soft_tokens(texts: list[str], k: int, shift: int) -> torch.Tensor:
    """(N, k or the longest text's token count, Dd); shift 1 gives each text its neighbour's."""
    out = []
    for text in texts[shift:] + texts[:shift]:
        ids = torch.tensor(tok(" " + text.strip(), add_special_tokens=False)["input_ids"])
        if k == 0:
            out.append(table[ids])  # (n, Dd), exact
            continue
        parts = ids.tensor_split(min(k, len(ids)))
        v = torch.stack([table[p].mean(0) for p in parts])  # (<= k, Dd)
        v = torch.cat([v, v[-1:].expand(k - len(v), -1)])  # texts shorter than k tokens repeat the last
        out.append(v / v.pow(2).mean(-1, keepdim=True).sqrt() * rms)
    return torch.nn.utils.rnn.pad_sequence(out, batch_first=True)  # k = 0: zero vectors pad the short texts


loss = ObjectiveLoss(engine)
with decoder_lora(engine, False):
    print(f"{len(val)} held-out texts; plain decoder; no soft tokens: {mean_loss(loss, val, False):.3f} nats/token")
    print("| soft tokens per text | own text's | another text's |\n|---|---:|---:|")
    for k in ks:
        row = []
        for shift in (0, 1):
            engine.soft_prompts = lambda texts, grad=True, k=k, shift=shift: soft_tokens(texts, k, shift)
            engine.config.adapter.tokens_per_chunk = max(k, 1)  # only read for window checks
            row.append(mean_loss(loss, val, True))
        print(f"| {'every token, exact' if k == 0 else f'{k}, means'} | {row[0]:.3f} | {row[1]:.3f} |", flush=True)
