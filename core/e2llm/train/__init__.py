"""Training: the offline corpus and QA generator, the data pipeline and the trainer."""
from .config import BuiltinData, DataConfig, ObjectiveConfig, OptimConfig, TrainConfig
from .data import Sample, TrainData, build_data, load_reason
from .trainer import Trainer

__all__ = ["TrainConfig", "DataConfig", "BuiltinData", "OptimConfig", "ObjectiveConfig", "Trainer", "Sample",
           "TrainData", "build_data", "load_reason"]
