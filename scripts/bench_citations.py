"""Peak memory of return_citations, before (every layer's full eager attention, stacked) and
after (the answer's query rows only, layer by layer: e2llm.citations), side by side in one run
on the real default models (MiniLM-L6 + SmolLM2-135M-Instruct, float32, CPU).

Peak = the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs before
each measurement) minus its resident memory just before, so each figure is what that one
citation pass added. Two settings:

- document: a context of N encoder tokens read as the default checkpoint reads it (64-token
  chunks, one soft token each) plus --raw-top-n raw passages (hybrid), one greedy answer;
  both ways run and their chunk scores are compared.
- decoder: T decoder positions (random soft tokens), the last --answer-tokens rows cited;
  "after" is run; "before" would hold layers x heads x T^2 float32 weights twice (the model's
  output and the stacked copy) and is given as that computed size, not run, where it exceeds
  --before-limit-gib.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_citations.py --context-tokens 4096 16384 --decoder-tokens 4096 16384
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "core"))

from e2llm import E2LLM  # noqa: E402
from e2llm.citations import answer_attention  # noqa: E402
from e2llm.testing import eager_attentions  # noqa: E402

QUESTION = "What does the document say about exceptions?"


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def measure(fn):
    """(result, peak MiB added over the resident memory before, seconds)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is honest
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = _kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, (_kib("VmHWM") - before) / 1024, seconds


@torch.no_grad()
def citations_before(engine, prepared) -> list[float]:
    """The replaced method, kept here as the baseline: full eager attention of every layer and head."""
    res = prepared.result
    base = engine._decoder_base
    spliced = engine._splice([prepared])
    answer_ids = engine.decoder_tokenizer(res.text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    embeds = torch.cat([spliced.inputs_embeds[0], base.get_input_embeddings()(answer_ids.to(engine.device))])[None]
    prompt_len = spliced.inputs_embeds.shape[1]
    att = eager_attentions(base, embeds).mean((0, 1))  # (T, T) over layers, heads
    rows = att[prompt_len - 1: max(prompt_len, embeds.shape[1] - 1)]
    per_soft = rows[:, spliced.soft_mask[0].nonzero().squeeze(-1)].mean(0)
    per_chunk = per_soft.view(len(res.chunks), -1).sum(-1)
    return (per_chunk / per_chunk.sum().clamp(min=1e-12)).tolist()


def document_of(engine, text: str, context_tokens: int) -> str:
    """The longest prefix of `text` (repeated if need be) with at most `context_tokens` encoder tokens."""
    while len(engine.encoder_tokenizer(text, add_special_tokens=False)["input_ids"]) < context_tokens:
        text += "\n\n" + text
    offsets = engine.encoder_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text[: offsets[context_tokens - 1][1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context-tokens", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--decoder-tokens", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--raw-top-n", type=int, default=4)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--before-limit-gib", type=float, default=4.0, help="run 'before' only where it needs less")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = E2LLM.from_pretrained("default")
    base = engine._decoder_base
    cfg = base.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    print(f"# {engine.config.decoder.name_or_path} decoder: {layers} layers x {heads} heads, float32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    import pydoc_data.topics

    text = "\n\n".join(v.strip() for _, v in sorted(pydoc_data.topics.topics.items()))
    print("\nsetting   context_tok  decoder_tok  before_MiB  before_s  after_MiB  after_s  before/after_MiB  max|score diff|")
    for n in args.context_tokens:
        doc = document_of(engine, text, n)
        prepared = engine._prepare(QUESTION, doc, raw_top_n=args.raw_top_n, max_new_tokens=args.answer_tokens, overflow="truncate")
        prepared.result.text = engine.generate(QUESTION, doc, raw_top_n=args.raw_top_n, max_new_tokens=args.answer_tokens,
                                               overflow="truncate")
        after, after_mib, after_s = measure(lambda: engine._citations(prepared))
        before, before_mib, before_s = measure(lambda: citations_before(engine, prepared))
        total = engine._splice([prepared]).inputs_embeds.shape[1] + len(engine.decoder_tokenizer(prepared.result.text)["input_ids"])
        diff = max(abs(a - b) for a, b in zip(after, before))
        print(f"document  {n:11d}  {total:11d}  {before_mib:10.1f}  {before_s:8.2f}  {after_mib:9.1f}  {after_s:7.2f}  "
              f"{before_mib / max(after_mib, 0.1):16.1f}  {diff:.1e}")
        raw = [c for c in prepared.result.citations if c.kind == "raw"]
        print(f"#   answer {prepared.result.text[:60]!r}; {len(prepared.result.chunks)} chunks, {len(raw)} raw passages; "
              f"raw share {sum(c.score for c in raw):.3f}")

    rms = engine.config.adapter.output_rms
    for T in args.decoder_tokens:
        embeds = torch.randn(1, T, engine.config.decoder.hidden_size) * rms
        rows = slice(T - args.answer_tokens - 1, T - 1)
        need_gib = 2 * layers * heads * T * T * 4 / 2**30
        if need_gib <= args.before_limit_gib:
            def run_before():
                previous = base.config._attn_implementation
                base.set_attn_implementation("eager")
                try:
                    att = base(inputs_embeds=embeds, output_attentions=True).attentions
                    return torch.stack([a[0].float() for a in att])[:, :, rows].sum((0, 1, 2))
                finally:
                    base.set_attn_implementation(previous)
            _, before_mib, before_s = measure(run_before)
            before_txt, before_s_txt = f"{before_mib:10.1f}", f"{before_s:8.2f}"
        else:
            before_mib, before_txt, before_s_txt = need_gib * 1024, f"{'~%.0f*' % (need_gib * 1024):>10}", f"{'-':>8}"
        with torch.no_grad():
            _, after_mib, after_s = measure(lambda: answer_attention(base, embeds, rows))
        print(f"decoder   {'-':>11}  {T:11d}  {before_txt}  {before_s_txt}  {after_mib:9.1f}  {after_s:7.2f}  "
              f"{before_mib / max(after_mib, 0.1):16.1f}  -")
    print("\n* computed, not run: 2 x layers x heads x T^2 x 4 bytes (the attentions the model returns, and their stacked copy)")


if __name__ == "__main__":
    main()
