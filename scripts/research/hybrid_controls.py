"""Do the soft prompts carry the document? Controls for hybrid reading, with the decoder's LoRA
off (plain) and on (tuned), on the synthetic items of an `e2llm eval` folder:

- hybrid:       this document's soft prompts + its raw top-n chunks (what `e2llm ask` reads);
- raw top-n:    the same raw chunks, no soft prompts;
- swapped soft: another document's soft prompts (the next item of the same length) + this
                document's raw top-n chunks.

If "swapped soft" scores like "hybrid", the soft prompts steer the decoder (a learned prompt)
rather than carry this document; if "raw top-n" scores like "hybrid", they add nothing.

    python scripts/research/hybrid_controls.py runs/long-hb --tasks two_chunk aggregation [--checkpoint default]

Prints a table of right answers per task, reading and decoder; answers go to FOLDER/controls.jsonl.
"""
import argparse
import collections
import json
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from e2llm import E2LLM, InputError
from e2llm.eval.metrics import score
from e2llm.eval.systems import decoder_lora
from e2llm.eval.tasks import load_run, run_items
from e2llm.softprompts import SoftPrompts

READINGS = ("hybrid", "raw top-n", "swapped soft")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an e2llm eval --output folder (synthetic tasks)")
    parser.add_argument("--tasks", nargs="+", default=["two_chunk"], help="tasks of that run to use (default two_chunk)")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--raw-top-n", type=int, default=2)
    args = parser.parse_args()
    try:
        run = load_run(args.folder)
        unknown = [t for t in args.tasks if t not in run.get("tasks", [])]
        if "tasks" in run and unknown:
            sys.exit(f"{args.folder}: the run has no task(s) {', '.join(unknown)}; it has {', '.join(run['tasks'])}")
        items = run_items(run, args.tasks)
    except InputError as e:
        sys.exit(f"error: {e}")
    warnings.filterwarnings("ignore", message=".*generation flags.*")
    engine = E2LLM.from_pretrained(args.checkpoint)
    cells: dict[tuple, list] = collections.defaultdict(lambda: [0.0, 0])
    with open(args.folder / "controls.jsonl", "w") as out:
        for item in tqdm(items, desc="controls", unit="item"):
            peers = [i for i in items if i.task == item.task and i.length == item.length]
            other = peers[(peers.index(item) + 1) % len(peers)]
            chunks, other_chunks = engine.chunk(item.context), engine.chunk(other.context)
            raw = [chunks[i].text for i in engine.raw_chunk_indices(item.question, chunks, args.raw_top_n)]
            contexts = {"hybrid": SoftPrompts(engine.encode_chunks(chunks), chunks), "raw top-n": None,
                        "swapped soft": SoftPrompts(engine.encode_chunks(other_chunks), other_chunks)}
            kwargs = dict(raw_texts=raw, raw_top_n=0, max_new_tokens=32, stop=list(item.stop),
                          return_result=True, overflow="truncate")
            for reading in READINGS:
                for decoder in ("plain", "tuned"):
                    with decoder_lora(engine, enabled=decoder == "tuned"):
                        result = engine.generate(item.question, contexts[reading], **kwargs)
                    right = score(item.metric, result.text, item.answers, item.choices, item.answer_index, item.letters)
                    cells[(item.task, reading, decoder)][0] += right
                    cells[(item.task, reading, decoder)][1] += 1
                    out.write(json.dumps({"item_id": item.item_id, "other": other.item_id, "reading": reading,
                                          "decoder": decoder, "score": right, "prediction": result.text}) + "\n")
    print("| task | reading | plain decoder | tuned decoder |")
    print("|---|---|---:|---:|")
    for task in args.tasks:
        for reading in READINGS:
            p, t = cells[(task, reading, "plain")], cells[(task, reading, "tuned")]
            print(f"| {task} | {reading} | {p[0]:.0f}/{p[1]} | {t[0]:.0f}/{t[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
