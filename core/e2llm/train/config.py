"""Training configuration (YAML or JSON), validated like the model config: unknown keys fail."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from ..config import E2LLMConfig, _Strict, load_config_file

# Training and evaluation split the built-in corpus the same way, so evaluation documents
# never appear in training (e2llm.eval uses these too).
SPLIT_SEED = 0
VAL_FRACTION = 0.1


class BuiltinData(_Strict):
    """The offline corpus (Python's own documentation), or the documents under ``paths``, as
    QA and reconstruction samples."""

    # Folders of .txt/.md (or JSONL with 'text') the QA contexts are drawn from, split 9:1 into
    # training and validation documents as recon_paths are; empty: Python's documentation.
    paths: list[str] = Field(default_factory=list)
    num_qa_train: int = Field(1200, ge=0)
    num_qa_val: int = Field(24, ge=0)
    num_recon_train: int = Field(4000, ge=0)
    num_recon_val: int = Field(24, ge=0)
    qa_context_tokens: tuple[int, int] = (256, 2048)
    qa_kinds: list[str] = Field(default_factory=lambda: ["single_fact", "two_chunk", "topic"])
    recon_words: tuple[int, int] = (20, 45)  # about one or two chunks of text
    hybrid_fraction: float = Field(0.3, ge=0, le=1, description="share of QA samples read in hybrid mode")
    hybrid_top_n: int = Field(3, ge=1, description="raw chunks those samples also read")
    # Long-context QA: extra training samples over whole documents far beyond the decoder's
    # window (hundreds to a thousand+ soft tokens), so the decoder sees at training time the
    # soft-prompt lengths it reads at 16K-64K. Drawn from the same documents and kinds.
    num_long_qa_train: int = Field(0, ge=0)
    long_qa_context_tokens: tuple[int, int] = (8192, 65536)
    seed: int = 0


class DataConfig(_Strict):
    train_jsonl: list[str] = Field(default_factory=list, description="reasoning samples {context, prompt, answer}")
    val_jsonl: list[str] = Field(default_factory=list)
    recon_paths: list[str] = Field(default_factory=list, description="folders of .txt/.md, or JSONL with 'text'")
    # Windows drawn from recon_paths: this many per document (a tenth of the documents is held
    # out for validation), from recon_words[0] to recon_words[1] words (five sizes in between).
    recon_windows_per_doc: float = Field(4.0, gt=0)
    recon_words: tuple[int, int] = (40, 40)
    # This share of the recon_paths windows becomes continuation samples (ICAE's): the soft
    # prompts of a window, the instruction prompt.continue_question, and the next window's text
    # as the target. They train with the reconstruction samples (same weight and gradients).
    continuation_fraction: float = Field(0.0, ge=0, le=1)
    recon_val_windows: Optional[int] = Field(None, ge=1, description="held-out windows (None: 2 per held-out document)")
    builtin: Optional[BuiltinData] = Field(default_factory=BuiltinData)
    on_error: Literal["raise", "skip"] = "skip"
    # Samples are chunked and tokenized once and kept here, keyed by the data, both tokenizers
    # and the chunking (default: ~/.cache/e2llm/train-data; "off": tokenize every run).
    cache_dir: Optional[str] = None
    # DataLoader worker processes that collate the next steps while the model trains (0: collate
    # in the training process).
    num_workers: int = Field(2, ge=0)


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)  # the paper's
    adapter_lr: Optional[float] = Field(None, gt=0, description="default: lr")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    max_steps: int = Field(1000, ge=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    batch_size: int = Field(8, ge=1, description="samples per step per objective (global, over all processes)")
    grad_accum: int = Field(1, ge=1)
    clip_norm: float = Field(1.0, gt=0)
    # A step whose gradient is NaN or inf is skipped (weights and optimizer state untouched);
    # this many in a row stop the run with an error instead of training on garbage.
    max_nonfinite_steps: int = Field(10, ge=1)
    # Frozen backbones are stored in this dtype (bf16 matmuls run ~3x faster on these CPUs and on
    # GPUs); what trains (adapter, LoRA) and the optimizer state stay float32.
    backbone_dtype: Literal["float32", "bfloat16"] = "float32"
    # bf16 autocast around the forward pass ("auto": on CUDA only); the trained tensors and
    # their optimizer state stay float32 master weights.
    autocast: Literal["auto", "bf16", "off"] = "auto"
    # Recompute the decoder's activations in the backward pass: less memory, bigger batches.
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _batch_splits(self) -> "OptimConfig":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        return self


class ObjectiveConfig(_Strict):
    recon_weight: float = Field(0.5, ge=0, description="lambda in lambda * L_recon + L_reason")
    recon_only_steps: int = Field(0, ge=0, description="first steps train reconstruction alone")
    # REFRAG's curriculum: reconstruction (and continuation) windows of one chunk first, then
    # longer ones: at step s a window of up to 1 + (most - 1) * s / curriculum_steps chunks is
    # drawn (0: any window from the start).
    curriculum_steps: int = Field(0, ge=0)
    reason: bool = True
    # False: only the QA loss tunes the decoder's LoRA. Reconstruction then cannot teach the
    # decoder the corpus's prior (which lowers the loss without the soft prompts and leaves them
    # carrying little); it still trains the adapter and encoder LoRA against that decoder.
    recon_trains_decoder: bool = True
    # False: QA samples run the encoder without gradients (the adapter and decoder LoRA still
    # learn from them; reconstruction still trains the encoder LoRA). A 64K-token context is
    # about a thousand chunks, and the encoder's backward pass over them dominates the step.
    reason_trains_encoder: bool = True
    # > 0: keep the soft prompts of a micro-batch's chunks from collapsing onto one shared
    # vector: adds spread_weight * max(0, min_spread - spread) to the loss, where spread is the
    # share of their energy that differs between chunks (e2llm.softprompts.spread). Without it
    # the adapter collapsed within 40 reconstruction steps on the default models (README).
    min_spread: float = Field(0.0, ge=0, lt=1)
    spread_weight: float = Field(1.0, ge=0)


# How a checkpoint reads (not what its weights are): a run from init_from may set these in `model`,
# e.g. the ranker that picks the raw chunks of its hybrid QA samples, which its checkpoints keep.
READING_KEYS = ("raw_top_n", "ranker", "ranker_candidates", "soft_prompts_min_tokens", "soft_prompts_max_tokens")


class TrainConfig(_Strict):
    model: E2LLMConfig = Field(default_factory=E2LLMConfig)
    init_from: Optional[str] = Field(None, description="checkpoint to start from (its config replaces `model`, "
                                     "except model.decoder.quantization: how this run stores the base, and the "
                                     "reading options READING_KEYS that `model` sets: they apply and are saved)")
    trainable: Literal["adapter", "adapter+encoder_lora", "all"] = "all"
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    output_dir: str = "runs/e2llm"
    save_every: int = Field(100, ge=1)
    keep_last: int = Field(3, ge=1)
    # A long run that outlives its machine: with --resume and no checkpoint in output_dir, start
    # from a kept copy of the run (scripts/keep_run.py: weights, step, log; no optimizer state)
    # at its step, with a fresh optimizer warmed up again over optim.warmup_steps.
    continue_from: Optional[str] = Field(None, description="kept run folder (scripts/keep_run.py) for --resume")
    eval_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    num_generation_checks: int = Field(8, ge=0)
    save_dtype: Optional[Literal["float16", "bfloat16", "float32"]] = None
    seed: int = 0
    device: str = "auto"
    # With several processes: ddp keeps a whole engine per process; fsdp shards the decoder's
    # layers (and their LoRA and optimizer state) over the processes, for decoders too big to copy.
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    # With several processes: how long one may wait for the others at a collective (joining,
    # preparing the data, checkpoints) before the run fails (torch's NCCL default is 600 s).
    process_group_timeout_s: int = Field(1800, ge=1)
    # Training steps run the engine in training mode (gradient checkpointing recomputes, LoRA
    # dropout applies), but the frozen backbones' own dropout (e.g. BERT's 0.1) stays off
    # unless this is true: a step is then a function of (weights, samples), so resumed and
    # multi-process runs follow the single-process one. LoRA's dropout is model.*.lora.dropout.
    backbone_dropout: bool = False

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return load_config_file(cls, path)


def config_differences(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = ("optim.max_steps", "parallelism")) -> list[str]:
    """Dotted keys whose values differ, for refusing a resume from another config. The ignored
    keys do not change what a checkpoint holds (it stores whole tensors under ddp and fsdp)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and k not in ignore)
