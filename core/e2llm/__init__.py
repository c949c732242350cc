"""e2llm: answer questions about whole long documents, read as compressed soft prompts (E2LLM)."""
from .chunking import Chunk, chunk_spans, chunk_text, chunk_texts
from .config import (AdapterConfig, ChunkingConfig, DecoderConfig, E2LLMConfig, EncoderConfig, LoraSettings,
                     PromptConfig)
from .errors import (CheckpointError, ConfigError, ContextTooLongError, DeviceError, E2LLMError, InputError,
                     ModelNotFoundError, TrainingError)
from .generation import Citation, GenerationResult, TextStream
from .model import E2LLM
from .softprompts import SoftPrompts

__version__ = "0.1.0"

__all__ = [
    "E2LLM", "E2LLMConfig", "EncoderConfig", "DecoderConfig", "AdapterConfig", "ChunkingConfig", "PromptConfig",
    "LoraSettings", "SoftPrompts", "GenerationResult", "Citation", "TextStream", "Chunk", "chunk_spans", "chunk_text", "chunk_texts",
    "E2LLMError", "ConfigError", "DeviceError", "InputError", "ContextTooLongError", "CheckpointError", "ModelNotFoundError",
    "TrainingError",
]
