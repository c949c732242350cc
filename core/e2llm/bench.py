"""``e2llm bench latency``: E2LLM vs stuffing the full text into the same decoder, side by side.

Same decoder, same document, same question, greedy, exactly N new tokens (end-of-turn is
suppressed so both systems decode the same number of tokens). Peak memory is the peak
resident-set growth during the call on CPU (sampled every 2 ms), or peak allocated memory on
CUDA. Every ratio is measured in the same run, because these machines are noisy.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .cli_common import add_model_args, load_from_args

QUESTION = "Which statements does this document describe? Answer in one sentence."


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


class PeakMemory:
    """Peak memory growth during a block: RSS sampled by a thread on CPU, the allocator on CUDA."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base, self._max, self._stop = self._rss_mb(), 0.0, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._max = max(self._max, self._rss_mb())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(0.0, max(self._max, self._rss_mb()) - self._base)


def make_document(tokenizer, num_tokens: int) -> str:
    """Real English text (the Python language reference shipped with Python), cut to num_tokens."""
    import pydoc_data.topics

    topics = [v for _, v in sorted(pydoc_data.topics.topics.items())]
    text, parts = "", []
    while True:  # repeat the reference if a very long document is asked for
        for t in topics:
            parts.append(t.strip())
            if sum(len(p) for p in parts) > num_tokens * 6:
                text = "\n\n".join(parts)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"][:num_tokens]
                return tokenizer.decode(ids)


def _decoder_tokens(engine, text: str) -> int:
    return len(engine.decoder_tokenizer(text, add_special_tokens=False)["input_ids"])


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _staged(engine, system: str, context_tokens: int, stages, new_tokens: int, lora: bool = True) -> Row:
    """Run stages() (returns (prepared, {stage: seconds})), then decode exactly new_tokens."""
    from .eval.systems import decoder_lora

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
    from .softprompts import SoftPrompts

    mode = "store" if store else "cached" if cached else "first"
    if mode != "cached":
        engine.cache.clear()
    if mode == "store":
        engine._fingerprint_cache = None  # a fresh process computes it once

    def stages():
        chunks, t_chunk = _timed(lambda: engine.chunk(document))
        limit = engine.config.soft_prompts_max_tokens
        if engine.config.raw_top_n and limit is not None and sum(c.num_tokens for c in chunks) > limit:
            # as the engine reads it: beyond the limit the raw top-n chunks alone, no soft prompts to encode
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
    from .generation import GenerationResult, _Prepared
    from .splice import Tokens

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


def add_bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (printed side by side in one run)")
    which = bench.add_subparsers(dest="bench", required=True)
    lat = which.add_parser("latency", help="E2LLM vs full-context stuffing and RAG top-3, per stage: chunk, encode, "
                                           "rank, prefill, decode; TTFT, total time, peak memory")
    lat.add_argument("--max-new-tokens", dest="new_tokens", type=int, default=32)
    lat.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192], help="context sizes run by both systems")
    lat.add_argument("--long-sizes", type=int, nargs="*", default=[32768, 131072], help="sizes run by E2LLM alone")
    lat.add_argument("--output", type=Path, default=Path("bench-results"))
    lat.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    lat.add_argument("--repeats", type=int, default=1,
                     help="run the whole plan this many times; each row is the run with the median time to first token")
    lat.add_argument("--no-store", dest="store", action="store_false",
                     help="skip the 'fresh process over a document in the on-disk store' rows")
    lat.add_argument("--raw-top-n", type=int, default=None,
                     help="raw chunks e2llm also reads (hybrid; each question then ranks every chunk): default the checkpoint's")
    add_model_args(lat)

    def run(args) -> int:
        from .errors import InputError

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.raw_top_n is not None and args.raw_top_n < 0:  # before minutes of model loading
            raise InputError(f"--raw-top-n must be >= 0, got {args.raw_top_n}")
        if args.repeats < 1:
            raise InputError(f"--repeats must be >= 1, got {args.repeats}")
        engine = load_from_args(args)
        if args.raw_top_n is not None:
            engine.config.raw_top_n = args.raw_top_n
        print(f"e2llm reads every chunk compressed + the raw text of the {engine.config.raw_top_n} most similar to the question")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="e2llm-bench-store-") as store:  # empty: the first question fills it
            rows = latency(engine, args.sizes, args.long_sizes, args.new_tokens, args.output,
                           Path(store) if args.store else None, args.repeats)
        if args.repeats > 1:
            print(f"each row: the run with the median time to first token of {args.repeats}")
        print(format_table(rows))
        print(f"written: {args.output}/latency.md, latency.json, latency.png")
        return 0

    lat.set_defaults(func=run)

    dec = which.add_parser("decode", help="ms a decoded token: previous path, plain generate(), e2llm exact and fast; "
                                          "fast-vs-float32 greedy agreement on held-out items")
    dec.add_argument("--max-new-tokens", dest="new_tokens", type=int, default=32)
    dec.add_argument("--document-tokens", type=int, default=8192)
    dec.add_argument("--rounds", type=int, default=3)
    dec.add_argument("--agreement-items", type=int, default=40, help="held-out items for the agreement check (0: skip)")
    dec.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_model_args(dec)

    def _speed_table(speed: dict) -> str:
        base, plain = speed["generate(), LoRA unmerged (previous path)"], speed["generate(), same weights merged"]
        lines = ["| decode path | wall ms / token | CPU ms / token | tokens/s vs previous (wall, CPU) | vs plain generate() (wall, CPU) |",
                 "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {wall:.1f} | {cpu:.1f} | {base[0] / wall:.2f}x, {base[1] / cpu:.2f}x | "
                  f"{plain[0] / wall:.2f}x, {plain[1] / cpu:.2f}x |" for name, (wall, cpu) in speed.items()]
        return "\n".join(lines)

    def run_decode(args) -> int:
        if args.threads:
            torch.set_num_threads(args.threads)
        engine = load_from_args(args)
        speed = decode_speed(engine, args.document_tokens, args.new_tokens, args.rounds)
        print(f"Forced {args.new_tokens} new tokens after a question on a {args.document_tokens}-token synthetic document "
              f"(median of {args.rounds} interleaved rounds):\n")
        print(_speed_table(speed))
        if args.agreement_items:
            answers, tokens = answer_decode_speed(engine, args.agreement_items, args.new_tokens)
            print(f"\nThe answers to {args.agreement_items} held-out items ({tokens} tokens after the first, each path "
                  f"decoding each answer's length from its prompt):\n")
            print(_speed_table(answers))
            same, total, diffs = decode_agreement(engine, args.agreement_items, args.new_tokens)
            print(f"\nfast vs float32 greedy text: identical on {same}/{total} held-out items ({100 * same / total:.0f}%)")
            for item_id, exact, fast in diffs:
                print(f"  {item_id}: float32 {exact!r} | fast {fast!r}")
        return 0

    dec.set_defaults(func=run_decode)

    enc = which.add_parser("encode", help="encoder stage: seconds and GFLOP/s against the measured matmul peak, one "
                                          "pass vs two; ranking recall of both ranking modes on held-out items")
    enc.add_argument("--document-tokens", type=int, default=32768)
    enc.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    enc.add_argument("--recall-items", type=int, default=30, help="held-out items for the recall check (0: skip)")
    enc.add_argument("--recall-length", type=int, default=8192)
    enc.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_model_args(enc)

    def run_encode(args) -> int:
        if args.threads:
            torch.set_num_threads(args.threads)
        engine = load_from_args(args)
        peak32, peak16 = matmul_peak_gflops(torch.float32), matmul_peak_gflops(torch.bfloat16)
        rows = encoder_throughput(engine, args.document_tokens, args.batch_sizes)
        peak_bf16_after = matmul_peak_gflops(torch.bfloat16)
        print(f"measured matmul peak: float32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} / {peak_bf16_after:.0f} GFLOP/s "
              f"(before / after)")
        print("| encoder precision | ranking | chunks/batch | chunks | seconds | GFLOP/s | of bf16 peak |\n"
              "|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['precision']} | {r['ranking']} | {r['chunks_per_batch']} | {r['chunks']} | {r['seconds']:.2f} | "
                  f"{r['gflops_per_s']:.0f} | "
                  f"{r['gflops_per_s'] / max(peak16, peak_bf16_after):.0%} |")
        if args.recall_items:
            for mode, (hits, n) in ranking_recall(engine, args.recall_length, args.recall_items).items():
                print(f"ranking '{mode}': a chunk holding the answer in the top {engine.config.raw_top_n or 3} on "
                      f"{hits}/{n} held-out items at {args.recall_length} tokens")
        return 0

    enc.set_defaults(func=run_encode)


# ---------------------------------------------------------------------------- decode speed and agreement
class _StepClock:
    """A streamer noting when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # process CPU seconds: the work done, whatever else the machine runs
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())
        self._prompt_seen = True

    def end(self):
        pass

    def ms_per_token(self, cpu: bool = False) -> float:
        t = self.cpu_times if cpu else self.times
        return 1000 * (t[-1] - t[0]) / max(1, len(t) - 1)


def _decode_paths(engine, merged) -> dict:
    """name -> run(spliced, settings) -> _StepClock, each decoding settings.max_new_tokens tokens
    (settings.min_new_tokens keeps an end of turn away before then)."""
    def hf(model):
        def run(spliced, s):
            clock = _StepClock()
            with torch.no_grad():
                model.generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, streamer=clock,
                               max_new_tokens=s.max_new_tokens, min_new_tokens=s.min_new_tokens, do_sample=False,
                               temperature=None, top_p=None, top_k=None, pad_token_id=s.pad_token_id, eos_token_id=s.eos_token_ids)
            return clock
        return run

    def ours(fast: bool, drafts: int):
        def run(spliced, s):
            engine.fast_decode, clock = fast, _StepClock()
            try:
                engine._run_generate(spliced, dataclasses.replace(s, draft_tokens=drafts), streamer=clock)
            finally:
                engine.fast_decode = True
            return clock
        return run

    return {"generate(), LoRA unmerged (previous path)": hf(engine._decoder_base),
            "generate(), same weights merged": hf(merged),
            "e2llm decode, float32 exact": ours(False, 0),
            "e2llm decode, fast, one token a pass": ours(True, 0),
            f"e2llm decode, fast + drafts from the prompt ({engine.draft_tokens} a pass, as shipped)": ours(True, engine.draft_tokens)}


def _merged_copy(engine):
    from .decoding import build_inference_copy, is_quantized
    from .errors import ConfigError

    if is_quantized(engine.decoder):  # the comparison is between full-precision copies of the decoder
        raise ConfigError("bench decode compares float32 and bf16 copies of the decoder, which a 4-bit decoder "
                          "cannot make; run it with --quantize none")
    return build_inference_copy(engine.decoder, True, next(engine.decoder.parameters()).dtype)


def decode_speed(engine, document_tokens: int = 8192, new_tokens: int = 32, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Milliseconds a decoded token (after the first), wall clock and process CPU time, median over interleaved rounds, for the
    same spliced e2llm prompt: the previous path (transformers' generate on the decoder with its
    LoRA unmerged), plain generate() on the same weights merged, and e2llm's decode loop exact
    (float32 decoder) and fast (merged copy, bf16 where the hardware has bf16 units), one token a
    pass and with drafts copied from the prompt. The answer is forced to new_tokens tokens (no
    early end of turn), so the model runs on past its answer: drafts hit less there than in answers."""
    import statistics

    paths = _decode_paths(engine, _merged_copy(engine))
    doc = make_document(engine.decoder_tokenizer, document_tokens)
    spliced = engine._splice([engine._prepare(QUESTION, doc, max_new_tokens=new_tokens)])
    settings = dataclasses.replace(engine._gen_kwargs(new_tokens, False, 1.0, 1.0, None), min_new_tokens=new_tokens)
    for run in paths.values():  # warm-up (builds the fast copy)
        run(spliced, settings)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            clock = run(spliced, settings)
            times[name].append((clock.ms_per_token(), clock.ms_per_token(cpu=True)))
    return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()}


def _held_out_items(items: int, length: int, tasks=None) -> list:
    """`items` held-out synthetic items at `length` tokens, spread over the tasks (default: all)."""
    from .eval.tasks import TASKS, synthetic_items

    tasks = tasks or TASKS
    pool, _ = synthetic_items(tasks, [length], items_per_task=max(1, -(-items // len(tasks))))
    return pool[:items]


def answer_decode_speed(engine, items: int = 40, new_tokens: int = 32, length: int = 2048) -> tuple[dict[str, tuple[float, float]], int]:
    """The same paths on real answers: each held-out item is answered once (fast path, to its end
    of turn or stop string), then every path decodes that many tokens from that item's prompt.
    Returns wall and CPU ms a token after the first, over all items, and the tokens timed."""
    paths = _decode_paths(engine, _merged_copy(engine))
    totals = {name: [0.0, 0.0, 0] for name in paths}
    for i, item in enumerate(_held_out_items(items, length)):
        spliced = engine._splice([engine._prepare(item.question, item.context, max_new_tokens=new_tokens, overflow="truncate")])
        natural = engine._gen_kwargs(new_tokens, False, 1.0, 1.0, item.stop)
        n = len(paths["e2llm decode, fast, one token a pass"](spliced, natural).times)
        if n < 2:
            continue
        # the answer's length for every path: no end of turn before its last token, no stop strings
        fixed = dataclasses.replace(natural, max_new_tokens=n, min_new_tokens=n - 1, stop_strings=[])
        for name, run in paths.items():
            if i == 0:
                run(spliced, fixed)  # warm-up
            clock = run(spliced, fixed)
            totals[name][0] += clock.times[-1] - clock.times[0]
            totals[name][1] += clock.cpu_times[-1] - clock.cpu_times[0]
            totals[name][2] += len(clock.times) - 1
    tokens = totals["e2llm decode, fast, one token a pass"][2]
    return {name: (1000 * wall / max(1, k), 1000 * cpu / max(1, k)) for name, (wall, cpu, k) in totals.items()}, tokens


def decode_agreement(engine, items: int = 40, new_tokens: int = 32, length: int = 2048) -> tuple[int, int, list]:
    """Greedy answers of the fast decode path (bf16 where available) against float32 on held-out
    synthetic items: (identical, total, differing pairs)."""
    pool = _held_out_items(items, length)
    same, diffs = 0, []
    for item in pool:
        answers = []
        for fast in (False, True):
            engine.fast_decode = fast
            try:
                answers.append(engine.generate(item.question, item.context, max_new_tokens=new_tokens, stop=item.stop,
                                               overflow="truncate"))
            finally:
                engine.fast_decode = True
        same += answers[0] == answers[1]
        if answers[0] != answers[1]:
            diffs.append((item.item_id, *answers))
    return same, len(pool), diffs


# ---------------------------------------------------------------------------- encoder: throughput and ranking
def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """Measured matrix-product rate for (4 size x size) @ (size x size), best of a few."""
    a, b = torch.randn(4 * size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4 * size ** 3 * repeats / best / 1e9


def encoder_flops(engine, texts) -> float:
    """FLOPs of one encoder pass over texts as batched (padded positions count: they are computed)."""
    from .model import length_sorted_batches

    enc = engine.encoder.get_base_model() if hasattr(engine.encoder, "get_base_model") else engine.encoder
    cfg = enc.config
    linear = sum(m.in_features * m.out_features for m in enc.modules() if isinstance(m, torch.nn.Linear))
    bs, max_len = engine.config.encoder.chunks_per_batch, engine.config.chunking.tokens_per_chunk + 2
    total = 0.0
    lengths = [len(x) for x in engine.encoder_tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]]
    for rows in length_sorted_batches(lengths, bs):  # as the engine batches them
        n, length = len(rows), max(lengths[i] for i in rows)
        total += 2 * linear * n * length + 4 * cfg.num_hidden_layers * n * length ** 2 * cfg.hidden_size
    return total


def encoder_throughput(engine, document_tokens: int = 32768, batch_sizes=(16, 64, 256)) -> list[dict]:
    """Seconds and GFLOP/s of the encoder stage (all chunks of one document), both ranking modes,
    the encoder's inference precision (a bf16 copy vs bf16 autocast over float32 weights; one
    row where bf16 does not pay) and several batch sizes, interleaved, against the measured
    matmul peaks."""
    doc = make_document(engine.decoder_tokenizer, document_tokens)
    texts = [c.text for c in engine.chunk(doc)]
    flops = {}
    rows = []
    original = (engine.config.encoder.chunks_per_batch, engine.ranking_pass, engine.encoder_copy)
    precisions = {"bf16 copy": True, "bf16 autocast": False} if engine._encoder_copy_pays() else {"own dtype": False}
    try:
        for copy_ in precisions.values():  # warm-up: builds the bf16 copies (LoRA on and off) outside the timings
            engine.encoder_copy, engine.ranking_pass = copy_, "base"
            engine.cache.clear()
            engine._encode_pass(texts[:4])
            engine.ranking_vectors(texts[:4])
        for bs in batch_sizes:
            engine.config.encoder.chunks_per_batch = bs
            flops[bs] = encoder_flops(engine, texts)
            for precision, copy_ in precisions.items():
                for mode in ("base", "shared"):
                    engine.ranking_pass, engine.encoder_copy = mode, copy_
                    engine.cache.clear()
                    t = time.perf_counter()
                    engine._encode_pass(texts)  # soft prompts (+ shared ranking vectors)
                    engine.ranking_vectors(texts)  # base: the second pass
                    seconds = time.perf_counter() - t
                    passes = 2 if mode == "base" else 1
                    rows.append(dict(precision=precision, ranking=mode, chunks_per_batch=bs, chunks=len(texts),
                                     seconds=seconds, gflops_per_s=passes * flops[bs] / seconds / 1e9))
    finally:
        engine.config.encoder.chunks_per_batch, engine.ranking_pass, engine.encoder_copy = original
        engine.cache.clear()
    return rows


def ranking_recall(engine, length: int = 8192, items: int = 30, top: int | None = None) -> dict[str, tuple[int, int]]:
    """Held-out synthetic items whose answer sits in some chunk: how often a chunk holding it is
    among the ``top`` ranked (default raw_top_n), per ranking mode. (hits, items)."""
    from .eval.metrics import normalize_answer

    top = top or engine.config.raw_top_n or 3
    pool = _held_out_items(items, length, tasks=("single_fact", "multi_fact", "two_chunk"))
    out, original = {}, engine.ranking_pass
    try:
        for mode in ("base", "shared"):
            engine.ranking_pass, hits, n = mode, 0, 0
            engine.cache.clear()
            for item in pool:
                chunks = engine.chunk(item.context)
                answers = [normalize_answer(a) for a in item.answers]
                relevant = {i for i, c in enumerate(chunks) if any(a and a in normalize_answer(c.text) for a in answers)}
                if not relevant:
                    continue
                n += 1
                hits += bool(relevant & set(engine.rank_chunks(item.question, chunks)[:top]))
            out[mode] = (hits, n)
    finally:
        engine.ranking_pass = original
        engine.cache.clear()
    return out
