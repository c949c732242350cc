"""Evaluation: synthetic long-document tasks (over held-out corpus text or a folder of the user's
documents, or LongBench-style JSONL), the systems and their controls on one
decoder, resumable runs, tables, plots and the quality-target check. CLI: ``e2llm eval``."""
from .metrics import (contains_answer, exact_match, predict_choice, rouge_l, score, summarize, token_f1,
                      wilson_interval)
from .report import aggregate, markdown_table, quality_targets, write_report
from .runner import Checkpoint, ResultStore, checkpoint_labels, run_eval
from .systems import CONTROL_SYSTEMS, DEFAULT_SYSTEMS, NA_WINDOW, SYSTEMS, SystemSettings, run_system, select_rag_chunks
from .tasks import (DEFAULT_LENGTHS, EVAL_SEED, SPLIT_SEED, TASKS, VAL_FRACTION, EvalItem, folder_documents,
                    heldout_documents, load_dataset, synthetic_items)

__all__ = [
    "contains_answer", "exact_match", "predict_choice", "rouge_l", "score", "summarize", "token_f1", "wilson_interval",
    "aggregate", "markdown_table", "quality_targets", "write_report", "Checkpoint", "ResultStore", "checkpoint_labels",
    "run_eval", "NA_WINDOW", "SYSTEMS", "DEFAULT_SYSTEMS", "CONTROL_SYSTEMS", "SystemSettings", "run_system", "select_rag_chunks", "DEFAULT_LENGTHS",
    "EVAL_SEED", "SPLIT_SEED", "TASKS", "VAL_FRACTION", "EvalItem", "folder_documents", "heldout_documents", "load_dataset",
    "synthetic_items",
]
