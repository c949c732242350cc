"""``e2llm bench latency | decode | encode``: the arguments, and what each command prints.

Imports nothing heavy at the top: ``e2llm bench --help`` builds this parser, and each
benchmark's module (and torch) loads only when that benchmark runs.
"""
from __future__ import annotations

from pathlib import Path

from ..cli_common import add_model_args, load_from_args
from ..errors import InputError


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def add_parser(sub) -> None:
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
        from .latency_bench import format_table, latency

        _threads(args)
        if args.raw_top_n is not None and args.raw_top_n < 0:  # before minutes of model loading
            raise InputError(f"--raw-top-n must be >= 0, got {args.raw_top_n}")
        if args.repeats < 1:
            raise InputError(f"--repeats must be >= 1, got {args.repeats}")
        engine = load_from_args(args)
        if args.raw_top_n is not None:
            engine.config.raw_top_n = args.raw_top_n
        from ..devices import cpu_line

        print(cpu_line())
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
        from .decode_bench import answer_decode_speed, decode_agreement, decode_speed

        _threads(args)
        engine = load_from_args(args)
        speed = decode_speed(engine, args.document_tokens, args.new_tokens, args.rounds)
        from ..devices import cpu_line

        print(cpu_line())
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
        import torch

        from .encode_bench import encoder_throughput, ranking_recall
        from ..meters import matmul_peak_gflops

        _threads(args)
        engine = load_from_args(args)
        from ..devices import cpu_line

        print(cpu_line())
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
