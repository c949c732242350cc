"""Training: the offline corpus and QA generator, the data pipeline and the trainer."""
from .config import BuiltinData, DataConfig, ObjectiveConfig, OptimConfig, TrainConfig
from .data import Sample, TrainData, build_data, load_reason
from .trainer import Trainer

__all__ = ["TrainConfig", "DataConfig", "BuiltinData", "OptimConfig", "ObjectiveConfig", "Trainer", "Sample",
           "TrainData", "build_data", "load_reason"]

# The public surface evaluation reads (e2llm.eval): the corpus, the trainer's document split
# (its held-out side is what evaluation reads) and the QA generator.
from .config import SPLIT_SEED, VAL_FRACTION  # noqa: E402
from .corpus import (DataError, Document, iter_jsonl_records, iter_text_files, load_corpus,  # noqa: E402
                     split_documents)
from .synth import make_qa_samples  # noqa: E402

__all__ += ["SPLIT_SEED", "VAL_FRACTION", "DataError", "Document", "iter_jsonl_records", "iter_text_files",
            "load_corpus", "split_documents", "make_qa_samples"]
