"""LangChain's standard unit tests for chat models, run on ChatE2LLM.

The suite builds the model from ``chat_model_params`` many times (and times it): the default
checkpoint is named but never loaded, since constructors load nothing until first use.
What e2llm legitimately cannot do is declared through the suite's documented properties:
no tool calling and no structured output (a small local decoder with no function-calling
training; ``bind_tools`` / ``with_structured_output`` keep LangChain's NotImplementedError),
and text only (no images, audio, video or PDFs). ``test_serdes`` skips itself: the model is
not LangChain-serializable (it may hold a live ``engine=`` object).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from e2llm_plugins.langchain import ChatE2LLM  # noqa: E402


class TestChatE2LLMStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatE2LLM]:
        return ChatE2LLM

    @property
    def chat_model_params(self) -> dict:
        return {"checkpoint": "default", "temperature": 0}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one checkpoint per model object; a per-call `model=` only names the trace


def test_constructing_loads_nothing():
    """Not even torch is imported until the first call."""
    code = ("import sys; from e2llm_plugins.langchain import ChatE2LLM; m = ChatE2LLM(checkpoint='default'); "
            "m._get_ls_params(); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
