"""Issue 35 part 2: does a BM25 first pass (config.ranker_candidates) keep the ranker's recall?
On held-out synthetic items whose answer sits in some chunk (Python's held-out docs, and with
--docs a folder of text unlike the training corpus), how often a chunk holding the answer is in
the top 3, for the encoder alone, for BM25's N candidates reranked by the encoder, and for BM25
alone (config.ranker "bm25"); and the process CPU seconds of ranking (the encoder's pass, from
an empty cache each time).

    python scripts/research/bm25_recall.py [--docs runs/machine-docs] [--length 8192] [--items 30] [--candidates 16 32 64]
"""
import argparse
import time

from e2llm import E2LLM
from e2llm.devices import cpu_line
from e2llm.model import _bm25_index
from e2llm.bench.encode_bench import answer_chunks
from e2llm.eval.tasks import folder_documents, synthetic_items


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", default=None)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--items", type=int, default=30)
    p.add_argument("--candidates", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--tasks", nargs="+", default=["single_fact", "reworded_fact", "two_chunk"])
    args = p.parse_args()
    engine = E2LLM.from_pretrained("default")
    docs = folder_documents(args.docs) if args.docs else None
    pool, _ = synthetic_items(args.tasks, [args.length], items_per_task=-(-args.items // len(args.tasks)), docs=docs)
    pool = pool[: args.items]
    print(cpu_line())
    print(f"{len(pool)} items at {args.length} tokens from {args.docs or 'held-out Python docs'}; top {engine.config.raw_top_n}")
    print("| ranking | recall@3 | CPU s per question (ranking, empty cache) |\n|---|---:|---:|")
    for n in [None, *args.candidates, "bm25"]:
        engine.config.ranker, engine.config.ranker_candidates = ("bm25", None) if n == "bm25" else ("encoder", n)
        hits = total = 0
        cpu = 0.0
        for item in pool:
            chunks, relevant = answer_chunks(engine, item)
            if not relevant:
                continue
            engine.cache.clear()  # every question from scratch: the encoder's pass is the cost
            _bm25_index.cache_clear()  # and the BM25 index too
            t = time.process_time()
            top = engine.rank_chunks(item.question, chunks)[: engine.config.raw_top_n]
            cpu += time.process_time() - t
            total += 1
            hits += bool(relevant & set(top))
        name = ("encoder over every chunk" if n is None else "BM25 alone (ranker: bm25)" if n == "bm25"
                else f"BM25 top {n}, encoder reranks")
        print(f"| {name} | {hits}/{total} | {cpu / max(1, total):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
