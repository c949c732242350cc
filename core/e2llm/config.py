"""Configuration: pydantic v2 models that validate themselves and round-trip through JSON.

Every model forbids unknown keys, so a typo in a checkpoint or a YAML file fails loudly
with the key's name instead of being silently ignored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class LoraSettings(_Strict):
    """Low-rank adapter on a frozen backbone. ``r = 0`` switches LoRA off."""

    r: int = Field(8, ge=0, le=512, description="LoRA rank; 0 = no LoRA")
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=list, description="empty = the architecture's default (filled at build)")


Pooling = Literal["mean", "cls", "max", "last"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
Quantization = Literal["none", "4bit"]


class EncoderConfig(_Strict):
    # "decoder": the decoder's own backbone (its files, its tokenizer) reads the chunks, with its
    # own LoRA, as ICAE does: no second model to install, and soft prompts made in the space the
    # decoder reads. Loaded as a second copy of the decoder's weights.
    name_or_path: str = "default"
    # How a chunk's token states become one vector (the MLP adapter and the hybrid ranker).
    # None: what the encoder folder's sentence-transformers 1_Pooling/config.json says (CLS for
    # BGE, mean for MiniLM/GTE), else mean; filled in when the backbone is loaded.
    pooling: Optional[Pooling] = None
    attn_implementation: Optional[AttnImplementation] = Field(None, description="None: sdpa where the model has it, else eager")
    trust_remote_code: bool = Field(False, description="run the model folder's own Python code (only if you trust it)")
    chunks_per_batch: int = Field(64, ge=1, description="bounded batch: memory stays flat for any document")
    num_layers: Optional[int] = Field(None, ge=1, description="keep only the encoder's first N transformer layers "
                                      "(None: all): a cheaper encoder, e.g. the decoder's embeddings and two layers")
    # target_modules empty: per architecture (peft's defaults, completed with the key projection);
    # the resolved names are written back into the config, so a checkpoint records them
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(r=16, alpha=32))
    hidden_size: Optional[int] = Field(None, ge=1, description="filled when the backbone is loaded")


class DecoderConfig(_Strict):
    name_or_path: str = "default"
    attn_implementation: Optional[AttnImplementation] = Field(None, description="None: sdpa where the model has it, else eager")
    trust_remote_code: bool = Field(False, description="run the model folder's own Python code (only if you trust it)")
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(r=8, alpha=16))
    hidden_size: Optional[int] = Field(None, ge=1, description="filled when the backbone is loaded")
    max_window_tokens: Optional[int] = Field(None, ge=16, description="context window; default: the model's own")
    # How the frozen base weights are stored, not what trains: the LoRA tensors are the same
    # either way, so a checkpoint trained on a 4-bit base loads with "none" on a CPU.
    quantization: Quantization = Field("none", description="4bit: NF4 base weights via bitsandbytes (QLoRA; CUDA only)")


class AdapterConfig(_Strict):
    kind: Literal["pma", "mlp"] = "pma"
    tokens_per_chunk: int = Field(1, ge=1, le=64, description="k soft tokens per chunk (the paper uses 1)")
    num_heads: int = Field(4, ge=1, description="PMA heads (the paper found 4 best)")
    ffn_mult: int = Field(2, ge=1, le=8)
    mlp_hidden_size: int = Field(1024, ge=8)
    output_rms: Optional[float] = Field(None, gt=0, description="RMS of the decoder's token embeddings; filled at build")
    span: Literal["chunk", "local"] = Field("chunk", description="local: soft token j pools only the j-th of k equal "
                                            "parts of its chunk (pma only); chunk: every soft token pools the whole chunk")
    anchor: Literal["none", "mean_embedding"] = Field(
        "none", description="mean_embedding: each soft token starts as the mean of the decoder's own embeddings of its "
        "part of the chunk (pma only; the encoder must share the decoder's vocabulary: encoder.name_or_path: decoder)")

    @model_validator(mode="after")
    def _options_need_pma(self) -> "AdapterConfig":
        for key, value, off in (("span", self.span, "chunk"), ("anchor", self.anchor, "none")):
            if value != off and self.kind != "pma":
                raise ValueError(f"adapter.{key}: {value} needs adapter.kind: pma (got {self.kind}); use pma or {key}: {off}")
        return self


class ChunkingConfig(_Strict):
    tokens_per_chunk: int = Field(64, ge=8, le=510, description="encoder tokens per chunk")
    overlap_tokens: int = Field(0, ge=0)
    min_fill: float = Field(0.5, ge=0.0, le=1.0, description="never back off below this share of the budget")

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> "ChunkingConfig":
        if self.overlap_tokens >= self.tokens_per_chunk:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than tokens_per_chunk ({self.tokens_per_chunk})"
            )
        return self


class PromptConfig(_Strict):
    system: str = "You are a helpful assistant. Answer briefly from the document."
    # {document} is where the soft prompts go; {question} is the user's question.
    user: str = "Document: {document}\n\nQuestion: {question}"
    reconstruct_question: str = "Repeat the document word for word."
    continue_question: str = "Continue the document from where it stops."  # the continuation objective's
    raw_passages_header: str = "Passages quoted from the document:"
    max_new_tokens: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _has_slots(self) -> "PromptConfig":
        for slot in ("{document}", "{question}"):
            if self.user.count(slot) != 1:
                raise ValueError(f"prompt.user must contain {slot} exactly once, got: {self.user!r}")
        return self


class E2LLMConfig(_Strict):
    format_version: Literal[1] = 1
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    raw_top_n: int = Field(0, ge=0, description="hybrid reading: raw text of the n most similar chunks")
    soft_prompts_max_tokens: Optional[int] = Field(
        None, ge=0, description="hybrid reading (raw_top_n > 0) of a document longer than this many context tokens "
        "reads its raw top-n chunks alone, without soft prompts (the shipped default: docs/defaults.md); "
        "None: soft prompts at every length")
    soft_prompts_min_tokens: Optional[int] = Field(
        None, ge=0, description="hybrid reading (raw_top_n > 0) of a document of at most this many context tokens "
        "reads its raw top-n chunks alone, without soft prompts (the shipped default: 2048, where soft prompts cost "
        "answers: docs/defaults.md); None: soft prompts however short the document")
    ranker_candidates: Optional[int] = Field(
        None, ge=1, description="rank chunks in two passes: BM25 (the bm25s package) picks this many candidates, the "
        "encoder ranks only those; None: the encoder reads every chunk (issue 35: its pass dominates on CPUs)")
    ranker: Literal["encoder", "bm25"] = Field(
        "encoder", description="what ranks chunks for hybrid reading: the encoder's vectors (after BM25's first pass "
        "when ranker_candidates is set), or BM25 alone: no encoder pass, for an encoder whose mean-pooled states "
        "are no sentence embedding (encoder.name_or_path: decoder)")
    trained: bool = Field(False, description="False until a trainer wrote the weights")

    def soft_prompts_skipped(self, context_tokens: int) -> bool:
        """Whether hybrid reading of a document of this many context (encoder) tokens reads its raw
        top-n chunks alone: outside the lengths where soft prompts were measured to earn answers."""
        low, high = self.soft_prompts_min_tokens, self.soft_prompts_max_tokens
        return (high is not None and context_tokens > high) or (low is not None and context_tokens <= low)

    # -- JSON round trip -------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "E2LLMConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: not valid JSON ({e.msg} at line {e.lineno}); rewrite or restore the file") from None
        return validate_config(cls, data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> "E2LLMConfig":
        return load_config_file(cls, path)


def validate_config(cls, data, source: str):
    """cls.model_validate(data), failing with one ConfigError line that names each bad key."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation_error(e)}") from None


def load_config_file(cls, path: str | Path):
    """A JSON or YAML (.yaml/.yml) file validated as the pydantic model `cls`.

    A file may start from another with ``extends: other.yaml`` (a path relative to it): its own
    keys are merged over the other file's, mapping by mapping, so a recipe variant holds only
    what it changes."""
    return validate_config(cls, read_config_data(Path(path)), str(path))


def read_config_data(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """The file's keys, with its ``extends`` chain merged in (not validated)."""
    import yaml

    if path.resolve() in extended_by:
        chain = " -> ".join(str(p) for p in (*extended_by, path.resolve()))
        raise ConfigError(f"{path}: 'extends' loops back to a file that extends it ({chain})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        via = f" (extended by {extended_by[-1]})" if extended_by else ""
        raise ConfigError(f"{path}: config file not found{via}") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    data = data or {}
    if not isinstance(data, dict) or "extends" not in data:
        return data  # a non-mapping fails validation with its own message
    parent = data.pop("extends")
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must name a config file, got {parent!r}")
    return _merged(read_config_data(path.parent / parent, (*extended_by, path.resolve())), data)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def describe_validation_error(e: ValidationError) -> str:
    """One line per problem, each naming the dotted key: 'adapter.kind: ...'."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}' (remove it or check its spelling)")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
