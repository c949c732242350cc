"""e2llm: answer questions about whole long documents, read as compressed soft prompts (E2LLM).

The public names load their modules on first use (PEP 562): ``import e2llm.cli`` runs this file
first, and importing torch and transformers here would cost every ``e2llm`` command, ``--help``
included, seconds before it starts.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "chunking": ("Chunk", "chunk_spans", "chunk_text", "chunk_texts"),
    "config": ("AdapterConfig", "ChunkingConfig", "DecoderConfig", "E2LLMConfig", "EncoderConfig", "LoraSettings",
               "PromptConfig"),
    "errors": ("CheckpointError", "ConfigError", "ContextTooLongError", "DeviceError", "E2LLMError", "InputError",
               "ModelNotFoundError", "TrainingError"),
    "generation": ("Citation", "GenerationResult", "TextStream"),
    "model": ("E2LLM",),
    "softprompts": ("SoftPrompts",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "E2LLM", "E2LLMConfig", "EncoderConfig", "DecoderConfig", "AdapterConfig", "ChunkingConfig", "PromptConfig",
    "LoraSettings", "SoftPrompts", "GenerationResult", "Citation", "TextStream", "Chunk", "chunk_spans", "chunk_text", "chunk_texts",
    "E2LLMError", "ConfigError", "DeviceError", "InputError", "ContextTooLongError", "CheckpointError", "ModelNotFoundError",
    "TrainingError",
]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'e2llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
