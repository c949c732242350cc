"""``e2llm eval``: E2LLM vs RAG vs full context vs no context, on the same decoder and questions.

    e2llm eval --quick --output DIR             # small grid, minutes on a CPU
    e2llm eval --output DIR                     # full grid: 2K..64K tokens, 5 depths, 10 items
    e2llm eval --data longbench.jsonl --output DIR
    e2llm eval --docs FOLDER --output DIR       # the synthetic tasks over your own .txt/.md documents
    e2llm eval --checkpoint ck_k1 --checkpoint ck_k4 --output DIR   # compare k (labels k1, k4)

Writes DIR/items.jsonl (one line per answer; rerun the same command to resume),
DIR/results.md, DIR/results.json, DIR/accuracy_vs_length.png, DIR/needle_heatmap.png
and DIR/run.json (the settings), and prints the table and the quality-target check.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ..cli_common import add_model_args, load_engine
from ..errors import InputError
# the parser needs only the grid's names; the systems and tasks (torch, e2llm.train) load in run()
from .grid import (CONTROL_SYSTEMS, DEFAULT_DEPTHS, DEFAULT_ITEMS, DEFAULT_LENGTHS, DEFAULT_SYSTEMS, EVAL_SEED,
                   KNOWN_TASKS, OPT_IN_TASKS, QUICK_DEPTHS, QUICK_ITEMS, QUICK_LENGTHS, SYSTEMS, TASKS, format_length,
                   parse_length)

QUICK_DATA_ITEMS = 5


def add_parser(sub) -> None:
    """Add ``eval`` to the subcommands of ``e2llm`` (--checkpoint repeats here, so not add_model_args's)."""
    p = sub.add_parser("eval", help="accuracy / latency / memory of e2llm vs rag, full context and no context",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", metavar="PATH",
                   help="checkpoint folder or 'default'; repeat to compare several (labelled by k tokens per chunk)")
    add_model_args(p, checkpoint=False)
    p.add_argument("--output", default="eval-results", help="results folder (reused to resume)")
    p.add_argument("--quick", action="store_true",
                   help=f"small grid: lengths {', '.join(map(format_length, QUICK_LENGTHS))}, depths {list(QUICK_DEPTHS)}, "
                        f"{QUICK_ITEMS} items per task and length ({QUICK_DATA_ITEMS} records per --data file)")
    p.add_argument("--data", action="append", metavar="FILE.jsonl",
                   help="LongBench / LongBench v2 / RULER-style JSONL instead of the synthetic tasks (repeatable)")
    p.add_argument("--docs", metavar="FOLDER",
                   help="build the synthetic tasks over the .txt/.md documents in FOLDER (any real text) instead of "
                        "the training corpus's held-out side")
    p.add_argument("--metric", default="auto", help="for --data: auto (choice / f1 / rougeL per record), contains, choice, em, f1, rougeL")
    p.add_argument("--max-items", type=int, default=None, help="for --data: first N records of each file")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=f"synthetic tasks (default: {' '.join(TASKS)}; also {' '.join(OPT_IN_TASKS)})")
    p.add_argument("--systems", nargs="+", metavar="SYSTEM", help=f"systems (default: {' '.join(DEFAULT_SYSTEMS)}; controls by name: {' '.join(CONTROL_SYSTEMS)})")
    p.add_argument("--lengths", nargs="+", metavar="N", help="context lengths in decoder tokens, e.g. 2K 8K 32K "
                   f"(default {' '.join(map(format_length, DEFAULT_LENGTHS))})")
    p.add_argument("--depths", nargs="+", metavar="D", help=f"needle depths 0..1 (default {' '.join(map(str, DEFAULT_DEPTHS))})")
    p.add_argument("--items", type=int, default=None, help=f"items per task and length (default {DEFAULT_ITEMS})")
    p.add_argument("--raw-top-n", type=int, default=None,
                   help="raw chunks the hybrid system reads (default: each checkpoint's own raw_top_n, 2 where it has none)")
    p.add_argument("--baseline-lora", choices=["on", "off"], default="off",
                   help="decoder LoRA for rag / full / none: off = the plain instruct decoder (default), on = as trained")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="synthetic items of length L use sample seed SEED + L")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_args(args) -> tuple[Path, list[str]]:
    if not str(args.output).strip():
        raise InputError("--output is empty; pass a folder for the results, e.g. --output eval-results")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; pass a folder")
    systems = list(dict.fromkeys(args.systems or DEFAULT_SYSTEMS))
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise InputError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    unknown = [t for t in args.tasks or () if t not in KNOWN_TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_TASKS)}")
    if args.docs and args.data:
        raise InputError("--docs and --data both given; pass one: --docs builds the synthetic tasks, --data reads JSONL")
    for name, value, low in (("--items", args.items, 1), ("--max-items", args.max_items, 1),
                             ("--raw-top-n", args.raw_top_n, 0), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--threads", args.threads, 1)):
        if value is not None and value < low:
            raise InputError(f"{name} must be at least {low}, got {value}")
    return out, systems


def _depths(values) -> list[float]:
    try:
        depths = [float(v) for v in values]
    except ValueError:
        raise InputError(f"bad needle depth in {values}; write numbers between 0 and 1") from None
    if not all(0.0 <= d <= 1.0 for d in depths):
        raise InputError(f"needle depths must be between 0 and 1, got {depths}")
    return depths


def _load_engines(paths: list[str], device: str | None, dtype: str, quantization: str | None = None):
    from .runner import Checkpoint, checkpoint_labels

    engines = [load_engine(p, device, dtype, quantization=quantization) for p in paths]
    return [Checkpoint(label, engine, str(p)) for label, engine, p in zip(checkpoint_labels(engines), engines, paths)]


def run(args) -> int:
    from .report import markdown_table, aggregate, write_report
    from .runner import run_eval
    from .systems import SystemSettings, hybrid_raw_top_n
    from .tasks import (SPLIT_SEED, VAL_FRACTION, calibrate_tokens_per_word, folder_documents, heldout_documents,
                        load_dataset, rebucket, synthetic_items)

    out, systems = _check_args(args)
    lengths = [parse_length(v) for v in args.lengths] if args.lengths else list(QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    depths = _depths(args.depths) if args.depths else list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    n_items = args.items or (QUICK_ITEMS if args.quick else DEFAULT_ITEMS)
    data_items = []
    docs = folder_documents(args.docs) if args.docs else None  # read before loading models
    for path in args.data or ():  # read (and reject bad lines) before spending time on models
        max_items = args.max_items or (QUICK_DATA_ITEMS if args.quick else None)
        data_items += load_dataset(path, metric=args.metric, max_items=max_items)
    if args.data and len({i.item_id for i in data_items}) < len(data_items):
        for item in data_items:
            item.item_id = f"{item.source}/{item.item_id}"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    checkpoints = _load_engines(args.checkpoint or ["default"], args.device, args.dtype, args.quantize)
    tok = checkpoints[0].engine.decoder_tokenizer

    def count_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    skipped: list[str] = []
    run_settings = SystemSettings(raw_top_n=args.raw_top_n, baseline_lora=args.baseline_lora == "on",
                                  max_new_tokens=args.max_new_tokens)
    settings = {"checkpoints": {ck.label: ck.source for ck in checkpoints}, "systems": systems,
                "raw_top_n": {ck.label: hybrid_raw_top_n(ck.engine, run_settings) for ck in checkpoints},
                "baseline_lora": args.baseline_lora, "max_new_tokens": args.max_new_tokens,
                "window_tokens": checkpoints[0].engine.window_tokens}
    if args.data:
        rebucket(data_items, count_tokens)
        items = data_items
        settings.update(data=[str(p) for p in args.data], metric=args.metric)
    else:
        docs = docs or heldout_documents()
        tokens_per_word = calibrate_tokens_per_word(count_tokens, docs)
        items, skipped = synthetic_items(args.tasks or TASKS, lengths, depths, n_items, tokens_per_word=tokens_per_word,
                                         docs=docs, seed=args.seed)
        for reason in skipped:
            print(f"e2llm eval: skipped {reason}", file=sys.stderr)
        settings.update(tasks=list(args.tasks or TASKS), lengths=lengths, depths=depths, items_per_task=n_items,
                        seed=args.seed, tokens_per_word=tokens_per_word)
        if args.docs:
            settings.update(docs=str(Path(args.docs).resolve()), documents=len(docs))
        else:
            settings.update(split_seed=SPLIT_SEED, val_fraction=VAL_FRACTION, heldout_documents=len(docs))
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(settings, indent=2))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*generation flags.*")
        rows = run_eval(checkpoints, items, systems, run_settings, out, progress=not args.no_progress)
    paths = write_report(rows, out, settings=settings, skipped=skipped)
    print(markdown_table(aggregate(rows)))
    from .report import quality_targets

    for line in quality_targets(rows):
        print(line)
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
