"""``e2llm validate``: what a checkpoint learned about reading soft prompts, on held-out text.

Reconstruction on chunks of held-out documents (never trained on): the decoder's loss on
the chunk's text given its soft prompt vs. the same prompt without it (nats per token), and
greedy reconstruction ROUGE-L. A third number, the untuned decoder (LoRA off) without the soft
prompt, separates what the decoder LoRA learned about this kind of text from what the soft
prompt carries. Two numbers tell content from a learned prompt: the loss given *another*
held-out chunk's soft prompt (no lower than with the chunk's own, if the soft prompts carry
nothing of their text), and the soft prompts' spread (``soft_prompt_spread``: near 0 when the
adapter gives every chunk the same vector).
QA on long held-out documents is `e2llm eval`'s job.
"""
from __future__ import annotations

import json

from ..cli_common import add_model_args, load_from_args

VALIDATE_SEED = 7  # not a training seed: other windows of the held-out documents


def reconstruction_report(engine, num_texts: int = 24, words: int = 30, batch: int = 8, docs=None) -> dict:
    """docs: Documents to draw the texts from (default: the training corpus's held-out side)."""
    import torch  # here, not at the top: `e2llm validate --help` imports this module and stays quick

    with torch.no_grad():
        return _reconstruction_report(engine, num_texts, words, batch, docs)


def _reconstruction_report(engine, num_texts: int, words: int, batch: int, docs) -> dict:
    from tqdm import tqdm

    from ..eval import rouge_l  # eval's public API
    from ..lora_switch import decoder_lora
    from .config import SPLIT_SEED, VAL_FRACTION
    from .corpus import load_corpus, split_documents
    from .data import recon_samples
    from .synth import make_reconstruction_texts
    from .trainer import ObjectiveLoss, mean_loss, mean_spread, swap_contexts

    if docs is None:
        _, docs = split_documents(load_corpus(), SPLIT_SEED, VAL_FRACTION)
    samples = recon_samples(make_reconstruction_texts(docs, num_texts, VALIDATE_SEED, words),
                            engine.config.prompt.reconstruct_question)
    loss_fn = ObjectiveLoss(engine)
    with_soft_prompt, without = mean_loss(loss_fn, samples, True, batch), mean_loss(loss_fn, samples, False, batch)
    # each text with the next one's soft prompt: what a soft prompt gives beyond a fixed prompt
    with_other = mean_loss(loss_fn, swap_contexts(samples), True, batch)
    with decoder_lora(engine, enabled=False):
        untuned_without = mean_loss(loss_fn, samples, False, batch)
    rouge = []
    for i in tqdm(range(0, len(samples), batch), desc="validate", unit="batch"):
        part = samples[i:i + batch]
        budget = max(len(engine.layout.answer_ids(s.answer)) for s in part) + 8
        outs = engine.generate_batch([s.prompt for s in part], [s.context for s in part], raw_top_n=0, max_new_tokens=budget)
        rouge += [rouge_l(o, [s.answer]) for o, s in zip(outs, part)]
    return {
        "num_chunks": len(samples),
        "loss_with_soft_prompt": with_soft_prompt,
        "loss_without": without,
        "loss_with_other_soft_prompt": with_other,
        "loss_untuned_without": untuned_without,
        "rouge_l": sum(rouge) / len(rouge),
        "soft_prompt_spread": mean_spread(engine, samples),
        "example": {"text": samples[0].answer},
    }


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="held-out reconstruction: loss with vs without soft prompts, ROUGE-L")
    p.add_argument("--num-texts", type=int, default=24)
    p.add_argument("--words", type=int, default=30, help="words per held-out text (about one chunk)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers (and the example's reconstruction) to FILE as JSON")
    p.add_argument("--docs", metavar="FOLDER", help="draw the texts from the .txt/.md documents in FOLDER (text unlike "
                   "the training corpus) instead of the corpus's held-out side")
    add_model_args(p)

    def run(args) -> int:
        from ..eval import folder_documents  # eval's public API

        docs = folder_documents(args.docs) if args.docs else None  # a bad folder fails before the model loads
        engine = load_from_args(args)
        r = reconstruction_report(engine, args.num_texts, args.words, docs=docs)
        first = engine.generate(engine.config.prompt.reconstruct_question, r["example"]["text"], raw_top_n=0,
                                max_new_tokens=len(engine.layout.answer_ids(r["example"]["text"])) + 8)
        source = f"the documents in {args.docs}" if args.docs else "the training corpus's held-out documents"
        print(f"held-out reconstruction, {r['num_chunks']} texts of ~{args.words} words from {source}:")
        print(f"  loss given the soft prompt : {r['loss_with_soft_prompt']:.3f} nats/token")
        print(f"  loss given another chunk's : {r['loss_with_other_soft_prompt']:.3f} nats/token (what is left "
              "without the content: a learned prompt)")
        print(f"  loss without it            : {r['loss_without']:.3f} nats/token")
        print(f"  untuned decoder, without it: {r['loss_untuned_without']:.3f} nats/token (decoder LoRA off)")
        print(f"  greedy ROUGE-L             : {r['rouge_l']:.3f}")
        print(f"  soft-prompt spread         : {r['soft_prompt_spread']:.3f} (share that differs between chunks; "
              "near 0 = collapsed: every chunk gets the same vector)")
        print(f"  example text   : {r['example']['text'][:200]!r}")
        print(f"  reconstruction : {first[:200]!r}")
        if args.json:
            r["example"]["reconstruction"] = first
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"checkpoint": str(args.checkpoint), "words": args.words, "docs": args.docs, **r}, f, indent=1)
        return 0

    p.set_defaults(func=run)
