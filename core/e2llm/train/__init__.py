"""Training: the offline corpus and QA generator, the data pipeline and the trainer.

The names below load their modules on first use (PEP 562): ``e2llm train --help`` and
``e2llm validate --help`` import this package (their parsers live in it), and the trainer and the
data pipeline pull in torch.
"""
from __future__ import annotations

from ..lazy import lazy_names

_WHERE = {
    "config": ("TrainConfig", "DataConfig", "BuiltinData", "OptimConfig", "ObjectiveConfig", "SPLIT_SEED", "VAL_FRACTION"),
    "data": ("Sample", "TrainData", "build_data", "load_reason"),
    "trainer": ("Trainer",),
    # the public surface evaluation reads (e2llm.eval): the corpus, the trainer's document split
    # (its held-out side is what evaluation reads) and the QA generator
    "corpus": ("DataError", "Document", "iter_jsonl_records", "iter_text_files", "load_corpus", "split_documents"),
    "synth": ("make_qa_samples",),
}

__all__ = ["TrainConfig", "DataConfig", "BuiltinData", "OptimConfig", "ObjectiveConfig", "Trainer", "Sample",
           "TrainData", "build_data", "load_reason",
           "SPLIT_SEED", "VAL_FRACTION", "DataError", "Document", "iter_jsonl_records", "iter_text_files",
           "load_corpus", "split_documents", "make_qa_samples"]

__getattr__, __dir__ = lazy_names(__name__, _WHERE, __all__, globals())
