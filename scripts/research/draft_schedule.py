"""Issue 35 part 4: drafts copied from the prompt, always 8 a pass against the shipped schedule
(e2llm.decoding.next_draft_budget: twice as many after a draft taken whole, one more than
accepted after a miss), with one token a pass as the yardstick; the same rounds interleaved in
one process, forced text (8K synthetic document, 32 tokens) and held-out answers.

    python scripts/research/draft_schedule.py [--items 24] [--rounds 2]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python scripts/research/draft_schedule.py   # the float32 path
"""
import argparse

import torch

import e2llm.decoding as decoding
from e2llm import E2LLM
from e2llm.bench import decode_bench
from e2llm.devices import cpu_line

ONE = "e2llm decode, fast, one token a pass"
FIXED = {"on": False}
_schedule = decoding.next_draft_budget
decoding.next_draft_budget = lambda budget, drafted, accepted, most: most if FIXED["on"] else _schedule(budget, drafted, accepted, most)
_paths = decode_bench._decode_paths


def paths(engine, merged):
    every = _paths(engine, merged)
    drafts = next(run for name, run in every.items() if "drafts" in name)

    def fixed(spliced, s):
        FIXED["on"] = True
        try:
            return drafts(spliced, s)
        finally:
            FIXED["on"] = False

    return {ONE: every[ONE], "drafts, the schedule (shipped)": drafts, f"drafts, always {engine.draft_tokens}": fixed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    decode_bench._decode_paths = paths
    engine = E2LLM.from_pretrained("default")
    print(cpu_line())
    forced = decode_bench.decode_speed(engine, rounds=args.rounds)
    answers, tokens = decode_bench.answer_decode_speed(engine, items=args.items)
    for title, rows in ((f"forced 32 tokens, 8K document, median of {args.rounds} rounds", forced),
                        (f"answers to {args.items} held-out items ({tokens} tokens)", answers)):
        print(f"\n{title}\n\n| path | wall ms / token | CPU ms / token | vs one token a pass (wall) |\n|---|---:|---:|---:|")
        for name, (wall, cpu) in rows.items():
            print(f"| {name} | {wall:.1f} | {cpu:.1f} | {rows[ONE][0] / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
