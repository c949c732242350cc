"""Where a plugin object's engine comes from: pydantic fields and checks that the LangChain and
LlamaIndex classes inherit alike (both frameworks build on pydantic 2). Imports pydantic only."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from ._common import check_source, checkpoint_name, get_engine


class EngineSource(BaseModel):
    """checkpoint= (loaded on first use, once per checkpoint, device, dtype and quantization per
    process, and shared) or engine= (a loaded e2llm.E2LLM); neither: "default"."""

    checkpoint: Optional[str] = Field(default=None, description='a checkpoint folder (str or Path) or "default"')
    device: Optional[str] = Field(default=None, description='"cpu", "cuda", "cuda:1" or "auto"; None: from_pretrained\'s')
    dtype: Optional[str] = Field(default=None, description='"float32", "bfloat16" or "float16"; None: from_pretrained\'s')
    quantization: Optional[str] = Field(default=None, description='the decoder\'s base weights: "none", or "4bit" (CUDA and '
                                        'bitsandbytes); None: what the checkpoint was trained with')
    engine: Optional[Any] = Field(default=None, exclude=True, repr=False, description="a ready e2llm.E2LLM")

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _path_to_str(cls, value: Union[str, Path, None]) -> Optional[str]:
        return checkpoint_name(value)

    @model_validator(mode="after")
    def _one_source(self) -> "EngineSource":
        check_source(self.engine, self.checkpoint, type(self).__name__, self.device, self.dtype, self.quantization)
        return self

    def _engine(self):
        return get_engine(self.engine, self.checkpoint, self.device, self.dtype, self.quantization)
