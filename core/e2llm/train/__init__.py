"""Training: the offline corpus and QA generator, the data pipeline and the trainer.

The names below load their modules on first use (PEP 562): ``e2llm train --help`` and
``e2llm validate --help`` import this package (their parsers live in it), and the trainer and the
data pipeline pull in torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path as _Path

_WHERE = {
    "config": ("TrainConfig", "DataConfig", "BuiltinData", "OptimConfig", "ObjectiveConfig", "SPLIT_SEED", "VAL_FRACTION"),
    "data": ("Sample", "TrainData", "build_data", "load_reason"),
    "trainer": ("Trainer",),
    # the public surface evaluation reads (e2llm.eval): the corpus, the trainer's document split
    # (its held-out side is what evaluation reads) and the QA generator
    "corpus": ("DataError", "Document", "iter_jsonl_records", "iter_text_files", "load_corpus", "split_documents"),
    "synth": ("make_qa_samples",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = ["TrainConfig", "DataConfig", "BuiltinData", "OptimConfig", "ObjectiveConfig", "Trainer", "Sample",
           "TrainData", "build_data", "load_reason",
           "SPLIT_SEED", "VAL_FRACTION", "DataError", "Document", "iter_jsonl_records", "iter_text_files",
           "load_corpus", "split_documents", "make_qa_samples"]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        if (_Path(__file__).parent / f"{name}.py").is_file():  # e2llm.train.trainer etc., as when this file imported them
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'e2llm.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
