"""Framework plugins for e2llm: LangChain and LlamaIndex models that read long documents as
compressed soft prompts.

    from e2llm_plugins.langchain import E2LLM, ChatE2LLM, E2LLMEmbeddings, create_e2llm_documents_chain
    from e2llm_plugins.llama_index import E2LLMSynthesizer, E2LLMLLM, E2LLMEmbedding

Importing this package needs neither framework nor torch; each submodule imports its framework
(and fails with the pip extra to install), and the engine loads on the first call. The code
both plugins share is in :mod:`e2llm_plugins._common`.
"""
from __future__ import annotations

from typing import Any

from ._common import LANGCHAIN_PIP, LLAMA_INDEX_PIP, load_engine

_LAZY = {"E2LLM": "langchain", "ChatE2LLM": "langchain", "E2LLMEmbeddings": "langchain",
         "create_e2llm_documents_chain": "langchain",
         "E2LLMSynthesizer": "llama_index", "E2LLMLLM": "llama_index", "E2LLMEmbedding": "llama_index"}

__all__ = ["load_engine", "LANGCHAIN_PIP", "LLAMA_INDEX_PIP", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
