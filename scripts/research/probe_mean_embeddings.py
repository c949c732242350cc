"""Probe: can the plain decoder read soft tokens it was never trained on, if they are made of its
own token embeddings? No training. Each held-out reconstruction text becomes soft tokens:

  k = 0   every decoder token's own embedding (the text itself, as inputs_embeds: the ceiling)
  k >= 1  k soft tokens, each the mean of the embeddings of 1/k of the text's decoder tokens,
          rescaled to the RMS of a token embedding (a learned soft prompt's scale)

and the decoder, LoRA off, is asked to repeat the document. Printed: held-out reconstruction
loss (nats/token) with the text's own soft tokens, with another text's, and with none. If the
mean of a few embeddings were readable, it would be a soft prompt that needs no decoder tuning.

    python scripts/research/probe_mean_embeddings.py [K,K,...]     # default 0,1,4,16

scripts/research/probe_distill_means.py imports the helpers below.
"""
import sys
from typing import Callable

import torch

from e2llm import E2LLM
from e2llm.eval.systems import decoder_lora
from e2llm.train.config import DataConfig
from e2llm.train.data import TrainData, build_data
from e2llm.train.trainer import ObjectiveLoss, mean_loss


def heldout_recon_data(engine: E2LLM, num_train: int) -> TrainData:
    """The built-in corpus's reconstruction samples: ``num_train`` to train on, and the held-out 32."""
    builtin = {"num_qa_train": 0, "num_qa_val": 0, "num_recon_train": num_train, "num_recon_val": 32}
    return build_data(DataConfig.model_validate({"builtin": builtin}), engine.config.prompt.reconstruct_question)


def embedding_means(engine: E2LLM, texts: list[str], k: int) -> torch.Tensor:
    """(N, k or the longest text's token count, Dd): see the module docstring for k."""
    tok, table = engine.decoder_tokenizer, engine._decoder_base.get_input_embeddings().weight.detach()  # (V, Dd)
    out = []
    for text in texts:
        ids = torch.tensor(tok(" " + text.strip(), add_special_tokens=False)["input_ids"])
        if k == 0:
            out.append(table[ids].float())  # (n, Dd), exact
            continue
        v = torch.stack([table[p].float().mean(0) for p in ids.tensor_split(min(k, len(ids)))])  # (<= k, Dd)
        v = torch.cat([v, v[-1:].expand(k - len(v), -1)])  # texts shorter than k tokens repeat the last
        out.append(v / v.pow(2).mean(-1, keepdim=True).sqrt() * engine.config.adapter.output_rms)
    return torch.nn.utils.rnn.pad_sequence(out, batch_first=True)  # k = 0: zero vectors pad the short texts


@torch.no_grad()
def recon_losses(engine: E2LLM, samples, soft_tokens: Callable[[list[str]], torch.Tensor]) -> tuple[float, float]:
    """Reconstruction loss (nats/token) of ``samples`` read by the decoder as it is set (LoRA on
    or off), with each chunk's soft tokens from ``soft_tokens(chunk texts)``, then with its
    neighbour's (another chunk's)."""
    objective, row = ObjectiveLoss(engine), []
    for shift in (0, 1):
        engine.soft_prompts = lambda texts, grad=True, shift=shift: soft_tokens(texts[shift:] + texts[:shift])
        try:
            row.append(mean_loss(objective, samples, True))
        finally:
            del engine.soft_prompts  # the engine's own method again
    return row[0], row[1]


def main() -> None:
    arg = sys.argv[1] if len(sys.argv) > 1 else "0,1,4,16"
    if len(sys.argv) > 2 or not all(x.isdigit() for x in arg.split(",")):
        sys.exit("usage: python scripts/research/probe_mean_embeddings.py [K,K,...]   (K >= 0 soft tokens per text, e.g. 0,1,4,16)")
    ks = [int(x) for x in arg.split(",")]
    engine = E2LLM.from_pretrained("default")
    val = heldout_recon_data(engine, 8).recon_val
    with decoder_lora(engine, False):
        none = mean_loss(ObjectiveLoss(engine), val, False)
        print(f"{len(val)} held-out texts; plain decoder; no soft tokens: {none:.3f} nats/token")
        print("| soft tokens per text | own text's | another text's |\n|---|---:|---:|")
        for k in ks:
            own, other = recon_losses(engine, val, lambda texts, k=k: embedding_means(engine, texts, k))
            print(f"| {'every token, exact' if k == 0 else f'{k}, means'} | {own:.3f} | {other:.3f} |", flush=True)


if __name__ == "__main__":
    main()
