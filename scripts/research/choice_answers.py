"""How each system's answers to multiple-choice synthetic questions fall: the right choice,
another listed choice, or nothing on the list (a made-up name, a sentence without one).

    python scripts/research/choice_answers.py runs/long-hb            # an `e2llm eval` output folder

A wrong answer that names no choice is a reading or instruction-following failure, not a
wrong count: the split tells the two apart. Where the run has the no-context system, the
last column counts answers word for word the same as its answer to the same question: a
system that reads the document should rarely say what it says without it. The items are
rebuilt from the folder's run.json (same seed, lengths, depths and tokens per word), so only
synthetic runs are supported.
"""
import argparse
import collections
import json
import sys
from pathlib import Path

from e2llm.errors import InputError
from e2llm.eval.metrics import predict_choice
from e2llm.eval.runner import row_key
from e2llm.eval.tasks import METRIC_BY_TASK, load_run, run_items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an e2llm eval --output folder (synthetic tasks)")
    args = parser.parse_args()
    results = args.folder / "items.jsonl"
    try:
        run = load_run(args.folder)
        tasks = [t for t in run.get("tasks", []) if METRIC_BY_TASK.get(t) == "choice"]
        if "tasks" in run and not tasks:
            sys.exit(f"{args.folder}: no multiple-choice task (aggregation, topic, mention) in this run")
        items = run_items(run, tasks)
    except InputError as e:
        sys.exit(f"error: {e}")
    if not results.exists():
        sys.exit(f"{args.folder}: no items.jsonl; pass the --output folder of an e2llm eval run")
    by_key = {(i.task, i.length, i.item_id): i for i in items}
    latest: dict[tuple, dict] = {}  # a rerun appends a row per answer: the last one counts, as in e2llm eval
    for number, line in enumerate(results.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"{results}:{number}: not a JSON line (cut short by a kill? rerun the eval to repair it)")
        latest[row_key(row)] = row
    blind: dict[tuple, list[dict]] = collections.defaultdict(list)  # the no-context answers per item
    for row in latest.values():
        if row["system"] == "none" and row["status"] == "ok":
            blind[(row["task"], row["length"], row["item_id"])].append(row)
    counts: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in latest.values():
        item = by_key.get((row["task"], row["length"], row["item_id"]))
        if item is None or row["status"] != "ok":
            continue
        picked = predict_choice(row["prediction"], item.choices, item.letters)
        outcome = "right" if picked == item.answer_index else "another choice" if picked is not None else "no choice"
        key = (row["task"], row["system"], row["checkpoint"])
        counts[key][outcome] += 1
        nones = blind[(row["task"], row["length"], row["item_id"])]
        # the same checkpoint's no-context answer, or the one shared by all (plain decoder)
        none = next((r for r in nones if r["checkpoint"] == row["checkpoint"]), nones[0] if len(nones) == 1 else None)
        if none is not None and row["system"] != "none":
            counts[key]["compared"] += 1
            counts[key]["same"] += row["prediction"].strip() == none["prediction"].strip()
    print("| task | system | checkpoint | right | another listed choice | nothing on the list | same as no context |")
    print("|---|---|---|---:|---:|---:|---:|")
    for (task, system, ck), c in sorted(counts.items()):
        n = c["right"] + c["another choice"] + c["no choice"]
        same = f"{c['same']}/{c['compared']}" if c["compared"] else "–"
        print(f"| {task} | {system} | {ck} | {c['right']}/{n} | {c['another choice']}/{n} | {c['no choice']}/{n} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
