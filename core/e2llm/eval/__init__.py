"""Evaluation: synthetic long-document tasks (over held-out corpus text or a folder of the user's
documents, or LongBench-style JSONL), the systems and their controls on one
decoder, resumable runs, tables, plots and the quality-target check. CLI: ``e2llm eval``.

The names below load their modules on first use (PEP 562): ``e2llm eval --help`` imports this
package, and its modules pull in torch and e2llm.train.
"""
from __future__ import annotations

from ..lazy import lazy_names

_WHERE = {
    "metrics": ("contains_answer", "exact_match", "predict_choice", "rouge_l", "score", "summarize", "token_f1",
                "wilson_interval"),
    "report": ("aggregate", "markdown_table", "quality_targets", "write_report"),
    "runner": ("Checkpoint", "ResultStore", "checkpoint_labels", "run_eval"),
    "systems": ("CONTROL_SYSTEMS", "DEFAULT_SYSTEMS", "NA_WINDOW", "SYSTEMS", "SystemSettings", "run_system",
                "select_rag_chunks"),
    "tasks": ("DEFAULT_LENGTHS", "EVAL_SEED", "SPLIT_SEED", "TASKS", "VAL_FRACTION", "EvalItem", "folder_documents",
              "heldout_documents", "load_dataset", "synthetic_items"),
}

__all__ = [
    "contains_answer", "exact_match", "predict_choice", "rouge_l", "score", "summarize", "token_f1", "wilson_interval",
    "aggregate", "markdown_table", "quality_targets", "write_report", "Checkpoint", "ResultStore", "checkpoint_labels",
    "run_eval", "NA_WINDOW", "SYSTEMS", "DEFAULT_SYSTEMS", "CONTROL_SYSTEMS", "SystemSettings", "run_system", "select_rag_chunks", "DEFAULT_LENGTHS",
    "EVAL_SEED", "SPLIT_SEED", "TASKS", "VAL_FRACTION", "EvalItem", "folder_documents", "heldout_documents", "load_dataset",
    "synthetic_items",
]

__getattr__, __dir__ = lazy_names(__name__, _WHERE, __all__, globals())
