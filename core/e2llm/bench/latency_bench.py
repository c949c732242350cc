"""``e2llm bench latency``: E2LLM vs stuffing the full text into the same decoder, side by side.

Same decoder, same document, same question, greedy, exactly N new tokens (end-of-turn is
suppressed so both systems decode the same number of tokens). Peak memory is the peak
resident-set growth during the call on CPU (sampled every 2 ms), or peak allocated memory on
CUDA. Every ratio is measured in the same run, because these machines are noisy.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..lora_switch import decoder_lora
from ..meters import PeakMemory
from .measure import QUESTION, _decoder_tokens, _StepClock, _timed, make_document


@dataclass
class Row:
    system: str
    context_tokens: int  # decoder tokens of the document
    decoder_tokens: int  # positions the decoder read before answering
    ttft_s: float
    total_s: float
    peak_mem_mb: float
    chunk_s: float = 0.0  # chunking (e2llm, RAG) or tokenizing the whole text (full context)
    encode_s: float = 0.0  # encoder pass(es) that make soft prompts (and, with one pass, ranking vectors)
    rank_s: float = 0.0  # ranking the chunks against the question (a second encoder pass with ranking_pass 'base')
    prefill_s: float = 0.0  # splicing + the decoder's read of the prompt, to the first token
    decode_ms_per_token: float = 0.0  # after the first token
    ttft_cpu_s: float = 0.0  # process CPU seconds to the first token (robust on a shared machine)
    total_cpu_s: float = 0.0


def _staged(engine, system: str, context_tokens: int, stages, new_tokens: int, lora: bool = True) -> Row:
    """Run stages() (returns (prepared, {stage: seconds})), then decode exactly new_tokens."""
    settings = engine._gen_kwargs(new_tokens, False, 1.0, 1.0, None)
    settings.min_new_tokens = new_tokens  # both systems decode the same number of tokens
    clock = _StepClock()
    with decoder_lora(engine, enabled=lora), PeakMemory(engine.device) as mem:  # holds the lock when switching
        start, cpu_start = time.perf_counter(), time.process_time()
        prepared, times = stages()
        t_prefill = time.perf_counter()
        engine._run_generate(engine._splice([prepared]), settings, streamer=clock)
        total, total_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    r = prepared.result
    return Row(system, context_tokens, r.prompt_tokens + r.soft_tokens, clock.times[0] - start, total, mem.peak_mb,
               prefill_s=clock.times[0] - t_prefill, decode_ms_per_token=clock.ms_per_token(),
               ttft_cpu_s=clock.cpu_times[0] - cpu_start, total_cpu_s=total_cpu, **times)


def run_e2llm(engine, document: str, new_tokens: int, cached: bool = False, store: bool = False) -> Row:
    """A first question (nothing cached), a second one (cached: encodings in memory), or a fresh
    process over a document in the on-disk store (store: memory cache and fingerprint cleared)."""
    from ..softprompts import SoftPrompts

    mode = "store" if store else "cached" if cached else "first"
    if mode != "cached":
        engine.cache.clear()
    if mode == "store":
        engine._fingerprint_cache = None  # a fresh process computes it once

    def stages():
        chunks, t_chunk = _timed(lambda: engine.chunk(document))
        if engine.config.raw_top_n and engine.config.soft_prompts_skipped(sum(c.num_tokens for c in chunks)):
            # as the engine reads it: outside the soft-prompt lengths the raw top-n chunks alone, nothing to encode
            prepared, t_prep = _timed(lambda: engine._prepare(QUESTION, document, max_new_tokens=new_tokens))
            return prepared, dict(chunk_s=t_chunk, rank_s=t_prep)
        vectors, t_encode = _timed(lambda: engine.encode_chunks(chunks))
        raw, t_rank = _timed(lambda: engine.raw_chunk_indices(QUESTION, chunks, engine.config.raw_top_n))
        prepared, t_prep = _timed(lambda: engine._prepare(QUESTION, SoftPrompts(vectors, chunks), max_new_tokens=new_tokens))
        return prepared, dict(chunk_s=t_chunk, encode_s=t_encode, rank_s=t_rank + t_prep)

    name = {"first": "e2llm", "cached": "e2llm (cached)", "store": "e2llm (disk store)"}[mode]
    return _staged(engine, name, _decoder_tokens(engine, document), stages, new_tokens)


def run_full(engine, document: str, new_tokens: int) -> Row:
    """The plain decoder (its LoRA off) with the whole text in the prompt."""
    from ..generation import GenerationResult, _Prepared
    from ..splice import Tokens

    def stages():
        prefix, suffix = engine.layout.render(QUESTION)
        ids, t = _timed(lambda: engine.decoder_tokenizer(prefix + document + suffix, add_special_tokens=False)["input_ids"])
        return _Prepared([Tokens(ids)], GenerationResult("", len(ids), 0, 0, 0)), dict(chunk_s=t)

    return _staged(engine, "full context", _decoder_tokens(engine, document), stages, new_tokens, lora=False)


def run_rag(engine, document: str, new_tokens: int, top: int = 3) -> Row:
    """RAG on the same decoder (its LoRA off): the top chunks by the engine's ranker, raw, nothing compressed."""
    def stages():
        engine.cache.clear()
        chunks, t_chunk = _timed(lambda: engine.chunk(document))
        order, t_rank = _timed(lambda: engine.rank_chunks(QUESTION, chunks))
        picked = sorted(order[:top])
        prepared, t_prep = _timed(lambda: engine._prepare(QUESTION, None, raw_texts=[chunks[i].text for i in picked],
                                                          raw_top_n=0, max_new_tokens=new_tokens))
        return prepared, dict(chunk_s=t_chunk, rank_s=t_rank + t_prep)

    return _staged(engine, f"rag top-{top}", _decoder_tokens(engine, document), stages, new_tokens, lora=False)


def latency(engine, sizes_full=(2048, 4096, 8192), sizes_e2llm_only=(32768, 131072), new_tokens: int = 32,
            output: Path | None = None, store_dir: Path | None = None, repeats: int = 1) -> list[Row]:
    """Every system at every size, side by side in one run. With store_dir, e2llm also answers
    from an on-disk store the first question filled ("e2llm (disk store)"). With repeats > 1 the
    whole plan runs that many times over (every system sees the same drift of a noisy host) and
    each row is the run with the median time to first token."""
    from tqdm import tqdm

    tok = engine.decoder_tokenizer
    window = engine.window_tokens
    prompt_overhead = len(tok(engine.layout.render(QUESTION)[0] + engine.layout.render(QUESTION)[1])["input_ids"])
    e2llm_modes = ["e2llm", "cached"] + (["store"] if store_dir else [])
    plan = []
    for n in sizes_full:
        n_fit = min(n, window - prompt_overhead - new_tokens - 8)  # "8K" = as much as the window holds
        plan += [("full", n_fit), ("rag", n_fit)] + [(m, n_fit) for m in e2llm_modes]
    plan += [(s, n) for n in sizes_e2llm_only for s in ["rag"] + e2llm_modes]
    if store_dir:
        engine.use_store(store_dir / "round-0")
    run_e2llm(engine, make_document(tok, 512), new_tokens)  # warm-up: first-call costs out of the table
    run_full(engine, make_document(tok, 512), new_tokens)
    runs, docs = {}, {}
    todo = [(r, system, n) for r in range(repeats) for system, n in plan]
    for i, (round_, system, n) in enumerate(tqdm(todo, desc="bench latency", unit="run")):
        doc = docs.setdefault(n, make_document(tok, n))
        if store_dir and round_ and i % len(plan) == 0:
            engine.use_store(store_dir / f"round-{round_}")  # empty: each round's first questions encode anew
        if system == "full":
            row = run_full(engine, doc, new_tokens)
        else:
            store = engine.store
            if system != "store":  # only e2llm's first question fills the store (and the store row reads it)
                engine.store = store if system == "e2llm" else None
            if system == "rag":
                row = run_rag(engine, doc, new_tokens)
            else:
                row = run_e2llm(engine, doc, new_tokens, cached=system == "cached", store=system == "store")
            engine.store = store
        runs.setdefault((system, n), []).append(row)
    rows = [sorted(rs, key=lambda r: r.ttft_s)[len(rs) // 2] for rs in runs.values()]  # the median run, in plan order
    if output:
        output.mkdir(parents=True, exist_ok=True)
        (output / "latency.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
        (output / "latency.md").write_text(format_table(rows))
        plot(rows, output / "latency.png")
    return rows


def format_table(rows: list[Row]) -> str:
    lines = ["| system | context tokens | decoder tokens | chunk s | encode s | rank s | prefill s | decode ms/token | "
             "TTFT s | total s | peak mem MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.system} | {r.context_tokens} | {r.decoder_tokens} | {r.chunk_s:.3f} | {r.encode_s:.3f} | "
                     f"{r.rank_s:.3f} | {r.prefill_s:.3f} | {r.decode_ms_per_token:.1f} | {r.ttft_s:.3f} | {r.total_s:.3f} | "
                     f"{r.peak_mem_mb:.0f} |")
    by = {(r.system, r.context_tokens): r for r in rows}
    lines += ["", "CPU seconds (process CPU time, robust where other jobs share the cores):", "",
              "| system | context tokens | TTFT CPU s | total CPU s |", "|---|---:|---:|---:|"]
    lines += [f"| {r.system} | {r.context_tokens} | {r.ttft_cpu_s:.3f} | {r.total_cpu_s:.3f} |" for r in rows]
    lines += ["", "Ratios (wall clock; CPU time in brackets):", "",
              "| context tokens | TTFT full / e2llm | TTFT rag / e2llm | first / cached question (total) | "
              "TTFT first / disk store | peak mem e2llm / full |", "|---:|---:|---:|---:|---:|---:|"]
    na = "n/a"
    for n in sorted({r.context_tokens for r in rows}):
        e, c, st = by.get(("e2llm", n)), by.get(("e2llm (cached)", n)), by.get(("e2llm (disk store)", n))
        full, rag = by.get(("full context", n)), by.get(("rag top-3", n))
        if e is None:
            continue
        lines.append(f"| {n} | {_ratio(full, e, 'ttft') if full else na} | {_ratio(rag, e, 'ttft') if rag else na} | "
                     f"{_ratio(e, c, 'total') if c else na} | {_ratio(e, st, 'ttft') if st else na} | "
                     f"{f'{e.peak_mem_mb / max(full.peak_mem_mb, 1e-9):.2f}' if full else na} |")
    return "\n".join(lines) + "\n"


def _ratio(a: Row, b: Row, what: str) -> str:
    """a / b for 'ttft' or 'total': wall clock, and process CPU time in brackets."""
    wall = getattr(a, f"{what}_s") / max(getattr(b, f"{what}_s"), 1e-9)
    cpu = getattr(a, f"{what}_cpu_s") / max(getattr(b, f"{what}_cpu_s"), 1e-9)
    return f"{wall:.1f}x ({cpu:.1f}x)"


STAGES = ("chunk_s", "encode_s", "rank_s", "prefill_s")


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for system in dict.fromkeys(r.system for r in rows):
        rs = sorted((r for r in rows if r.system == system), key=lambda r: r.context_tokens)
        axes[0].plot([r.context_tokens for r in rs], [r.ttft_s for r in rs], "o-", label=system)
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("context tokens")
    axes[0].set_ylabel("time to first token (s)")
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    first = sorted((r for r in rows if r.system == "e2llm"), key=lambda r: r.context_tokens)
    xs = range(len(first))
    bottom = [0.0] * len(first)
    for stage in STAGES + ("decode",):
        vals = [r.decode_ms_per_token * 31 / 1000 if stage == "decode" else getattr(r, stage) for r in first]
        axes[1].bar(xs, vals, bottom=bottom, label=stage.replace("_s", "") + (" (31 tokens)" if stage == "decode" else ""))
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[1].set_xticks(list(xs), [str(r.context_tokens) for r in first])
    axes[1].set_xlabel("context tokens")
    axes[1].set_ylabel("seconds (e2llm, first question)")
    axes[1].legend(fontsize=8)
    fig.suptitle("E2LLM vs full-context stuffing and RAG top-3, same decoder; e2llm stages")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
