"""``e2llm bench latency``: E2LLM vs stuffing the full text into the same decoder, side by side.

Same decoder, same document, same question, greedy, exactly N new tokens (end-of-turn is
suppressed so both systems decode the same number of tokens). Peak memory is the peak
resident-set growth during the call on CPU (sampled every 2 ms), or peak allocated memory on
CUDA. Every ratio is measured in the same run, because these machines are noisy.
"""
from __future__ import annotations

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


class _FirstTokenClock:
    """A generate() streamer that only notes when the first new token arrives (TTFT). It runs in
    the generating thread, so a caller may hold the engine's lock around the call."""

    def __init__(self):
        self.puts, self.first_token_time = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:  # the first put is the prompt (empty with inputs_embeds)
            self.first_token_time = time.perf_counter()

    def end(self):
        pass


def _measure(engine, prepare, new_tokens: int):
    """Run prepare() (chunk, encode, tokenize: part of the cost) then decode exactly new_tokens."""
    kwargs = engine._gen_kwargs(new_tokens, False, 1.0, 1.0, None)
    kwargs.min_new_tokens = new_tokens
    clock = _FirstTokenClock()
    with PeakMemory(engine.device) as mem:
        start = time.perf_counter()
        prepared = prepare()
        engine._run_generate(engine._splice([prepared]), kwargs, streamer=clock)
        total = time.perf_counter() - start
    return prepared.result, clock.first_token_time - start, total, mem.peak_mb


def _decoder_tokens(engine, text: str) -> int:
    return len(engine.decoder_tokenizer(text, add_special_tokens=False)["input_ids"])


def run_e2llm(engine, document: str, new_tokens: int, cached: bool) -> Row:
    """TTFT includes chunking and encoding (first question) or only decoding (cached)."""
    if not cached:
        engine.cache.clear()
    r, ttft, total, mem = _measure(engine, lambda: engine._prepare(QUESTION, document, max_new_tokens=new_tokens), new_tokens)
    return Row("e2llm (cached)" if cached else "e2llm", _decoder_tokens(engine, document), r.prompt_tokens + r.soft_tokens,
               ttft, total, mem)


def run_full(engine, document: str, new_tokens: int) -> Row:
    """The plain decoder (its LoRA off) with the whole text in the prompt."""
    from .eval.systems import decoder_lora
    from .generation import GenerationResult, _Prepared
    from .splice import Tokens

    def prepare():
        prefix, suffix = engine.layout.render(QUESTION)
        ids = engine.decoder_tokenizer(prefix + document + suffix, add_special_tokens=False)["input_ids"]
        return _Prepared([Tokens(ids)], GenerationResult("", len(ids), 0, 0, 0))

    with decoder_lora(engine, enabled=False):  # holds the engine's lock: the switch is global state
        r, ttft, total, mem = _measure(engine, prepare, new_tokens)
    return Row("full context", _decoder_tokens(engine, document), r.prompt_tokens, ttft, total, mem)


def latency(engine, sizes_full=(2048, 4096, 8192), sizes_e2llm_only=(32768, 131072), new_tokens: int = 32,
            output: Path | None = None) -> list[Row]:
    from tqdm import tqdm

    tok = engine.decoder_tokenizer
    window = engine.window_tokens
    prompt_overhead = len(tok(engine.layout.render(QUESTION)[0] + engine.layout.render(QUESTION)[1])["input_ids"])
    plan = []
    for n in sizes_full:
        n_fit = min(n, window - prompt_overhead - new_tokens - 8)  # "8K" = as much as the window holds
        plan += [("full", n_fit), ("e2llm", n_fit), ("cached", n_fit)]
    plan += [(s, n) for n in sizes_e2llm_only for s in ("e2llm", "cached")]
    run_e2llm(engine, make_document(tok, 512), new_tokens, cached=False)  # warm-up: first-call costs out of the table
    rows, docs = [], {}
    for system, n in tqdm(plan, desc="bench latency", unit="run"):
        doc = docs.setdefault(n, make_document(tok, n))
        if system == "full":
            rows.append(run_full(engine, doc, new_tokens))
        else:
            rows.append(run_e2llm(engine, doc, new_tokens, cached=(system == "cached")))
    if output:
        output.mkdir(parents=True, exist_ok=True)
        (output / "latency.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
        (output / "latency.md").write_text(format_table(rows))
        plot(rows, output / "latency.png")
    return rows


def format_table(rows: list[Row]) -> str:
    lines = ["| system | context tokens | decoder tokens | TTFT s | total s | peak mem MB |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.system} | {r.context_tokens} | {r.decoder_tokens} | {r.ttft_s:.3f} | {r.total_s:.3f} | {r.peak_mem_mb:.0f} |")
    by = {(r.system, r.context_tokens): r for r in rows}
    lines += ["", "| context tokens | TTFT full / e2llm | peak mem e2llm / full | first / cached question (total) |", "|---:|---:|---:|---:|"]
    for (system, n), full in by.items():
        if system != "full context":
            continue
        e, c = by[("e2llm", n)], by[("e2llm (cached)", n)]
        lines.append(f"| {n} | {full.ttft_s / e.ttft_s:.1f}x | {e.peak_mem_mb / max(full.peak_mem_mb, 1e-9):.2f} | {e.total_s / c.total_s:.1f}x |")
    e2 = sorted((r for r in rows if r.system == "e2llm"), key=lambda r: r.context_tokens)
    if len(e2) >= 2:
        a, b = e2[-3] if len(e2) >= 3 else e2[0], e2[-1]
        lines.append(f"\ne2llm time growth {a.context_tokens} -> {b.context_tokens} tokens: "
                     f"{b.total_s / a.total_s:.1f}x for {b.context_tokens / a.context_tokens:.1f}x the text (linear = equal)")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for system in dict.fromkeys(r.system for r in rows):
        rs = sorted((r for r in rows if r.system == system), key=lambda r: r.context_tokens)
        xs = [r.context_tokens for r in rs]
        axes[0].plot(xs, [r.ttft_s for r in rs], "o-", label=system)
        axes[1].plot(xs, [r.peak_mem_mb for r in rs], "o-", label=system)
    for ax, ylabel in zip(axes, ("time to first token (s)", "peak memory growth (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("E2LLM vs full-context stuffing, same decoder")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (printed side by side in one run)")
    which = bench.add_subparsers(dest="bench", required=True)
    lat = which.add_parser("latency", help="E2LLM vs full-context stuffing: TTFT, total time, peak memory")
    lat.add_argument("--new-tokens", type=int, default=32)
    lat.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192], help="context sizes run by both systems")
    lat.add_argument("--long-sizes", type=int, nargs="*", default=[32768, 131072], help="sizes run by E2LLM alone")
    lat.add_argument("--output", type=Path, default=Path("bench-results"))
    lat.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    lat.add_argument("--raw-top-n", type=int, default=None,
                     help="raw chunks e2llm also reads (hybrid; each question then ranks every chunk): default the checkpoint's")
    add_model_args(lat)

    def run(args) -> int:
        from .errors import InputError

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.raw_top_n is not None and args.raw_top_n < 0:  # before minutes of model loading
            raise InputError(f"--raw-top-n must be >= 0, got {args.raw_top_n}")
        engine = load_from_args(args)
        if args.raw_top_n is not None:
            engine.config.raw_top_n = args.raw_top_n
        print(f"e2llm reads every chunk compressed + the raw text of the {engine.config.raw_top_n} most similar to the question")
        rows = latency(engine, args.sizes, args.long_sizes, args.new_tokens, args.output)
        print(format_table(rows))
        print(f"written: {args.output}/latency.md, latency.json, latency.png")
        return 0

    lat.set_defaults(func=run)
