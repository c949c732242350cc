"""Probe: where is a name lost on its way from a chunk to the decoder's answer?

One chunk of held-out text with one inserted mention of a random name ("The brave badger
appeared in yet another report."), and four names to choose from (chance: 25%). Each readout
picks the name whose representation is most similar to the chunk's, or lets the decoder answer:

  encoder (retrieval)   MiniLM, LoRA off, mean-pooled: chunk vs the name alone (hybrid's ranker)
  soft prompt vs soft   the chunk's soft prompt vs the name's own soft prompt (same encoder + adapter)
  soft prompt vs tokens the chunk's soft prompt vs the decoder's input embeddings of the name's tokens
  ... -> retrieval map  a ridge map to retrieval vectors, fitted on other chunks (no names),
                        then the retrieval readout: is the name linearly there? From the soft
                        prompt, and from the encoder's mean-pooled states with its LoRA on
                        (what the adapter reads), which tells the adapter's loss from the LoRA's
  decoder, compressed   e2llm reading the one soft prompt: "Which of these names does it mention?"
  decoder, raw text     the decoder reading the chunk's text, LoRA on (tuned) and off (plain)

    python scripts/research/probe_name_presence.py [CHECKPOINT] [NUM_CHUNKS] [--no-decoder]   # default, 200
    (--no-decoder: the representation readouts only; the decoder's take ~10 of ~13 minutes)
    (CHECKPOINT "untrained": the default models with a freshly initialised adapter and LoRAs)
"""
import random
import sys
import time

import torch

from e2llm import E2LLM
from e2llm.adapter import mean_pool
from e2llm.eval.metrics import score
from e2llm.eval.systems import decoder_lora
from e2llm.eval.tasks import heldout_documents
from e2llm.softprompts import soft_prompt_spread
from e2llm.train.synth import MENTION_TEMPLATES, _entity

PROBE_SEED = 424242  # not an evaluation or training seed
FILLER_WORDS = 24  # + a ~9-word mention: one 64-token chunk of this corpus
NUM_CHOICES = 4


def chunks_with_names(docs, num: int, rng: random.Random, fits) -> list[tuple[str, list[str]]]:
    """(chunk text, names): the chunk mentions names[0] once; the others appear nowhere.
    Only texts that stay one chunk (``fits``) are kept, so the mention is never cut off."""
    out = []
    while len(out) < num:
        words = rng.choice(docs).text.split()
        start = rng.randrange(len(words) - FILLER_WORDS)
        filler = words[start:start + FILLER_WORDS]
        names = []
        while len(names) < NUM_CHOICES:
            name = _entity(rng)
            if name not in names and name.split()[1] not in " ".join(filler).lower():
                names.append(name)
        cut = rng.randrange(FILLER_WORDS + 1)
        mention = rng.choice(MENTION_TEMPLATES).format(entity=names[0])
        text = " ".join(filler[:cut] + [mention] + filler[cut:])
        if fits(text):
            out.append((text, names))
    return out


def plain_chunks(docs, num: int, rng: random.Random) -> list[str]:
    texts = []
    for _ in range(num):
        words = rng.choice(docs).text.split()
        start = rng.randrange(len(words) - FILLER_WORDS - 9)
        texts.append(" ".join(words[start:start + FILLER_WORDS + 9]))
    return texts


def linear_map(x_fit: torch.Tensor, y_fit: torch.Tensor, lam: float = 1.0):
    """Ridge regression x -> y on x standardized per dimension, so a map can be found however
    small the part of x that varies between chunks; returns the fitted map as a function."""
    mean, scale = x_fit.mean(0), x_fit.std(0).clamp(min=1e-8)
    x = (x_fit - mean) / scale
    w = torch.linalg.solve(x.T @ x + lam * torch.eye(x.shape[1]), x.T @ y_fit)
    return lambda v: ((v - mean) / scale) @ w


def pooled_states(engine, texts) -> torch.Tensor:
    """(n, De) mean of the encoder's token states with its LoRA on: what the adapter reads."""
    return engine._encoded(texts, lambda states, mask, ids: (mean_pool(states, mask).float(),))[0]


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-decoder"]
    with_decoder = "--no-decoder" not in sys.argv[1:]
    if len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
        sys.exit("usage: python scripts/research/probe_name_presence.py [CHECKPOINT] [NUM_CHUNKS] [--no-decoder]")
    checkpoint = args[0] if args else "default"
    num = int(args[1]) if len(args) > 1 else 200
    start = time.time()
    if checkpoint == "untrained":
        torch.manual_seed(0)
        engine = E2LLM.build(E2LLM.from_pretrained("default").config)
    else:
        engine = E2LLM.from_pretrained(checkpoint)
    rng = random.Random(PROBE_SEED)
    docs = [d for d in heldout_documents() if d.num_words > 4 * FILLER_WORDS]
    items = chunks_with_names(docs, num, rng, lambda text: len(engine.chunk(text)) == 1)
    texts = [t for t, _ in items]
    unit = lambda v: torch.nn.functional.normalize(v.float(), dim=-1)  # noqa: E731

    with torch.no_grad():
        raw_soft = engine.soft_prompts(texts)  # (n, k, Dd)
        soft = unit(raw_soft[:, 0])  # (n, Dd), the first soft token
        retr = engine.retrieval_vectors(texts)  # (n, De)
        names = [n for _, ns in items for n in ns]
        name_phrases = [f"The {n}." for n in names]
        name_soft = unit(engine.soft_prompts(name_phrases)[:, 0]).view(num, NUM_CHOICES, -1)
        name_retr = engine.retrieval_vectors(name_phrases).view(num, NUM_CHOICES, -1)
        table = engine.decoder.get_input_embeddings().weight
        tok = engine.decoder_tokenizer
        name_tok = unit(torch.stack([table[tok(" " + n, add_special_tokens=False)["input_ids"]].mean(0) for n in names]))
        name_tok = name_tok.view(num, NUM_CHOICES, -1)
        fit = plain_chunks(docs, 4 * num, random.Random(PROBE_SEED + 1))  # other text: the map never sees a name
        fit_retr = engine.retrieval_vectors(fit).float()
        from_soft = linear_map(engine.soft_prompts(fit)[:, 0].float(), fit_retr)
        mapped_soft = unit(from_soft(raw_soft[:, 0].float()))
        from_pooled = linear_map(pooled_states(engine, fit), fit_retr)
        mapped_pooled = unit(from_pooled(pooled_states(engine, texts)))

    def pick(chunk_vecs: torch.Tensor, name_vecs: torch.Tensor) -> float:
        sims = torch.einsum("nd,ncd->nc", chunk_vecs, name_vecs)
        return (sims.argmax(-1) == 0).float().mean().item()

    rows = [("encoder (retrieval, LoRA off)", pick(retr, name_retr)),
            ("soft prompt vs the name's soft prompt", pick(soft, name_soft)),
            ("soft prompt vs the name's token embeddings", pick(soft, name_tok)),
            ("encoder with its LoRA, mean-pooled -> retrieval space (ridge)", pick(mapped_pooled, name_retr)),
            ("soft prompt -> retrieval space (ridge)", pick(mapped_soft, name_retr))]
    for mode in ("compressed", "raw text, tuned", "raw text, plain") if with_decoder else ():
        right = 0
        for text, ns in items:
            listed = ns[:]
            rng.shuffle(listed)
            question = f"Which of these names does the text mention: {', '.join(listed)}? Answer with the name."
            if mode == "compressed":
                answer = engine.generate(question, text, raw_top_n=0, max_new_tokens=12, stop=["\n"])
            else:
                with decoder_lora(engine, mode.endswith("tuned")):
                    answer = engine.generate(question, None, raw_texts=[text], max_new_tokens=24, stop=["\n"])
            right += score("choice", answer, [ns[0]], listed, listed.index(ns[0]), False)
        rows.append((f"decoder reading the {mode}", right / num))
    print(f"\n{checkpoint}: {num} chunks, one mention each, {NUM_CHOICES} names to choose from (chance 0.25);"
          f" soft-prompt spread {soft_prompt_spread(raw_soft):.3f}; {time.time() - start:.0f} s\n")
    print("| readout | right |\n|---|---:|")
    for name, acc in rows:
        print(f"| {name} | {acc:.2f} |")


if __name__ == "__main__":
    main()
