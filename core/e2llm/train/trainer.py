"""The E2LLM trainer: reconstruction + long-context instruction tuning, in one readable loop.

    loss = recon_weight * L_recon + L_reason        (token-mean cross-entropy per objective)

Both objectives go through the same splice and model as inference. A step's samples are a
pure function of (seed, step), checkpoints hold model + optimizer + step, so a run killed
at any moment resumes exactly. Under torchrun / accelerate launch each process takes its
share of every batch and DDP (or FSDP: ``parallelism: fsdp``, see distributed.py) averages
gradients; losses are normalised by the *global* token count, so N processes follow the same
curve as one with the same batch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import types
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_dir, refuse_nonfinite
from ..errors import ConfigError, InputError, TrainingError
from ..model import E2LLM
from ..softprompts import soft_prompt_spread, spread
from ..splice import IGNORE_INDEX
from .config import READING_KEYS, TrainConfig, config_differences
from ..model import _bf16_autocast
from .batches import (StepBatches, Tokenized, _join, cache_key, cached_tokenize, collate, default_cache_dir, fits, raw_passages,  # noqa: F401
                      to_device, tokenize)
from .data import Sample, TrainData, build_data
from .throughput import StepMeter
from .distributed import (Parallel, check_parallelism, decoder_layers, device_for, dist_info, full, leave_process_group, like, move_all_but,
                          shard_decoder)

STATE_NAME, OPTIM_NAME = "trainer_state.json", "optimizer.safetensors"
# Keys a resumed run may change: they change how a step is run (its length, the processes, how
# its samples are split into micro-batches: losses are normalised over the whole step), not what
# a checkpoint holds or which samples a step reads.
RESUME_MAY_CHANGE = ("optim.max_steps", "parallelism", "process_group_timeout_s", "optim.grad_accum", "data.num_workers")


# --------------------------------------------------------------------------- the loss
class ObjectiveLoss(nn.Module):
    """Per-sample summed cross-entropy and target-token counts, for a collated batch
    (e2llm.train.batches) or a list of samples (tokenized here, the same way).

    An nn.Module so DDP can wrap it: the engine is held, not subclassed."""

    def __init__(self, engine: E2LLM, reason_trains_encoder: bool = True, min_spread: float = 0.0):
        super().__init__()
        self.engine = engine
        self.reason_trains_encoder = reason_trains_encoder
        self.min_spread = min_spread
        self.spread_penalty = None  # max(0, min_spread - spread) of the last call's soft prompts, when asked for

    def collate(self, samples: Sequence[Sample], with_context: bool = True) -> dict:
        """with_context=False: the same prompts and targets without the soft prompts (a baseline)."""
        tok = tokenize(self.engine, samples, with_context)
        return collate(tok, range(len(samples)), *pad_ids(self.engine))

    def forward(self, batch: dict | Sequence[Sample], with_context: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.engine
        if not isinstance(batch, dict):
            batch = to_device(self.collate(batch, with_context), e.device)
        encoder_grad = self.reason_trains_encoder or batch["has_recon"]
        vectors = encode_ids(e, batch["enc_ids"], batch["enc_mask"], encoder_grad) if batch["enc_ids"].numel() else None  # (n, k, Dd)
        self.spread_penalty = None
        if self.min_spread and vectors is not None and len(vectors) > 1 and torch.is_grad_enabled():
            self.spread_penalty = (self.min_spread - spread(vectors)).clamp(min=0)
        # inputs_embeds as splice() builds them: token embeddings, soft tokens in their slots, zero padding
        embeds = e._decoder_base.get_input_embeddings()(batch["dec_ids"])  # (B, T, Dd)
        if vectors is not None:
            soft = batch["soft_index"]  # (B, T) index into the n * k soft tokens, -1 elsewhere
            flat = vectors.flatten(0, 1).to(embeds.dtype)  # (n * k, Dd)
            embeds = torch.where((soft >= 0).unsqueeze(-1), flat[soft.clamp(min=0)], embeds)
        mask = batch["attention_mask"]  # (B, T), left-padded: every answer ends at the last position
        embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Only the answer span needs logits: (B, longest answer, V) instead of (B, T, V), which is
        # most of a step's memory. Position t predicts token t + 1.
        n = batch["max_answer"]
        target = batch["labels"][:, -n:]  # (B, n)
        # use_cache=False: a loss needs no KV cache (in eval mode transformers would build one).
        # The positions as an index tensor, not a count: a count slices the hidden states to a
        # strided view, and a strided input that needs a gradient makes the head a batched
        # product over a copy of its whole weight per sample (on CPU most of a small step's time)
        keep = torch.arange(embeds.shape[1] - n - 1, embeds.shape[1], device=embeds.device)
        logits = e.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False,
                           logits_to_keep=keep).logits[:, :-1]  # (B, n, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        return ce.view(target.shape).sum(1), (target != IGNORE_INDEX).sum(1)  # (B,), (B,)


def encode_ids(engine: E2LLM, ids: torch.Tensor, mask: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """(n, k, Dd) soft prompts from pre-tokenized chunks (n, L), as ``E2LLM.soft_prompts`` makes
    them from texts: bounded encoder batches, bf16 autocast where the encoder runs without gradients."""
    bs = engine.config.encoder.chunks_per_batch
    grad = grad and torch.is_grad_enabled()
    fast = engine.autocast_encoder and not grad
    precision = _bf16_autocast(engine.device, next(engine.encoder.parameters()).dtype) if fast else contextlib.nullcontext()
    outs = []
    with engine.lock:
        for i in range(0, len(ids), bs):
            with precision, torch.set_grad_enabled(grad):
                states = engine.encoder(input_ids=ids[i:i + bs], attention_mask=mask[i:i + bs]).last_hidden_state
            outs.append(engine.adapt(states, mask[i:i + bs], ids[i:i + bs]))
    return torch.cat(outs)


def pad_ids(engine: E2LLM) -> tuple[int, int, bool]:
    """(encoder pad id, decoder pad id, encoder pads on the left) for ``collate``."""
    enc = engine.encoder_tokenizer
    return int(enc.pad_token_id or 0), int(engine.decoder_tokenizer.pad_token_id), enc.padding_side == "left"


@torch.no_grad()
def mean_loss(loss_fn: ObjectiveLoss, samples: Sequence[Sample], with_context: bool = True, batch: int = 8) -> float:
    """Cross-entropy per target token (nats) over ``samples``, ``batch`` samples at a time."""
    ce_sum = n_sum = 0.0
    for i in range(0, len(samples), batch):
        ce, n = loss_fn(samples[i:i + batch], with_context=with_context)
        ce_sum, n_sum = ce_sum + float(ce.sum()), n_sum + float(n.sum())
    return ce_sum / max(1.0, n_sum)


def swap_contexts(samples: Sequence[Sample]) -> list[Sample]:
    """Each sample with the next one's context: the control for what a soft prompt carries."""
    return [replace(s, context=samples[(i + 1) % len(samples)].context) for i, s in enumerate(samples)]


@torch.no_grad()
def mean_spread(engine: E2LLM, samples: Sequence[Sample]) -> float:
    """The spread (``soft_prompt_spread``) of the soft prompts of ``samples``' contexts, each
    read as one chunk: near 0 when the adapter gives every chunk the same vector."""
    return soft_prompt_spread(engine.soft_prompts([s.context for s in samples]))


# --------------------------------------------------------------------------- set-up
def set_trainable(engine: E2LLM, trainable: str) -> list[dict]:
    """Freeze what the config says; return optimizer parameter groups (adapter, LoRA)."""
    for name, p in engine.named_parameters():
        is_lora = "lora_" in name
        on = name.startswith("adapter.") or (is_lora and name.startswith("encoder.") and trainable != "adapter") \
            or (is_lora and name.startswith("decoder.") and trainable == "all")
        p.requires_grad_(on)
    adapter = [p for n, p in engine.named_parameters() if p.requires_grad and n.startswith("adapter.")]
    lora = [p for n, p in engine.named_parameters() if p.requires_grad and not n.startswith("adapter.")]
    return [g for g in ({"params": adapter, "name": "adapter"}, {"params": lora, "name": "lora"}) if g["params"]]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio; a multiplier of the base lr."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_mode(engine: E2LLM, backbone_dropout: bool = False) -> None:
    """The engine's mode for a training step. Training mode is what makes Hugging Face layers
    recompute their activations under gradient checkpointing and peft apply LoRA dropout; the
    frozen backbones' own dropout stays off unless asked for (TrainConfig.backbone_dropout), by
    leaving in eval mode every backbone module but the layers that checkpoint (and the modules
    that hold them) and LoRA's dropout. Dropout written as a function call in one of those
    layers' own forward (not in a submodule) would still apply: none of the tested families has one."""
    engine.train()
    if backbone_dropout:
        return
    for part in (engine.encoder, engine.decoder):
        names = [n for n, m in part.named_modules() if hasattr(m, "gradient_checkpointing")]
        keep = {n[:i] for n in names for i in [0, len(n)] + [j for j, c in enumerate(n) if c == "."]}  # they and their parents
        for name, m in part.named_modules():
            if name not in keep and "lora_dropout" not in name.split("."):
                m.training = False


def step_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of a step on a process (dropout draws): a resumed run draws what the
    uninterrupted one drew, whichever step it resumes at."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:8], "little") >> 1


def _detached_linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.weight.detach(), None if self.bias is None else self.bias.detach())


@contextlib.contextmanager
def gradients_kept_out(linears: Sequence[nn.Linear]):
    """Within: these layers compute what they always do, but from detached weights, so the
    graph holds no path to them and the backward pass gives them no gradient (it still flows
    through them to their inputs). Keep the backward inside too: gradient checkpointing
    recomputes the forward there. Under DDP they are then unused parameters, and under FSDP
    unsharded weights without a gradient: neither has anything to reduce for them, unlike a
    gradient computed and cleared afterwards (FSDP reduces deferred micro-batches' gradients
    together with the last one's)."""
    for m in linears:
        m.forward = types.MethodType(_detached_linear, m)
    try:
        yield
    finally:
        for m in linears:
            del m.forward


def trained_linears(module: nn.Module, what: str) -> list[nn.Linear]:
    """The linear layers that hold ``module``'s trained parameters (its LoRA A and B)."""
    out = []
    for name, m in module.named_modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            if type(m) is not nn.Linear:
                raise ConfigError(f"{what}: the trained parameters of {name} ({type(m).__name__}) are not a linear layer's, "
                                  "so their gradient cannot be kept out; set objective.recon_trains_decoder: true")
            out.append(m)
    return out


def free_inference_copies(engine: E2LLM) -> None:
    """Drop the inference copies generation and no-gradient encoding build (a merged decoder, a
    bf16 encoder): during training they would hold a second model's memory until the next
    validation, and the weights they copied change every step anyway."""
    for name in ("_inference_copies", "_encoder_copies"):
        copies = getattr(engine, name, None)
        if copies is not None:
            copies.clear()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": full(v) for pid, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    scalars = {str(pid): {k: v for k, v in st.items() if not torch.is_tensor(v)} for pid, st in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    params = [p for g in opt.param_groups for p in g["params"]]  # state ids count params in group order
    for pid, st in state.items():  # moments of sharded params: this process's shard
        st.update({k: like(v, params[pid]) for k, v in st.items() if torch.is_tensor(v) and k != "step"})
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def whole_trained_state(engine: E2LLM) -> dict[str, torch.Tensor]:
    """The trained tensors, whole and on the CPU. Under FSDP gathering shards is collective:
    every process calls this."""
    return {k: full(v).detach().contiguous().cpu() for k, v in engine.trained_state_dict().items()}


def save_training_state(path: Path, engine: E2LLM, opt, step: int, cfg: TrainConfig, write: bool = True) -> None:
    """A loadable model checkpoint plus what resuming needs, written atomically. Under FSDP
    every process calls it (gathering shards is collective) and one writes."""
    model_tensors = whole_trained_state(engine)
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    if not write:
        return
    refuse_nonfinite(path, model_tensors)

    def write(tmp: Path) -> None:
        # a checkpoint after steps is a trained model: loading it must not warn "freshly initialised"
        config = engine.config.model_copy(update={"trained": engine.config.trained or step > 0})
        (tmp / CONFIG_NAME).write_text(config.to_json(), encoding="utf-8")
        save_file(model_tensors, str(tmp / WEIGHTS_NAME))
        save_file({k: v.contiguous().cpu() for k, v in opt_tensors.items()}, str(tmp / OPTIM_NAME))
        state = {"step": step, "optimizer": opt_meta, "train_config": cfg.model_dump(mode="json")}
        (tmp / STATE_NAME).write_text(json.dumps(state), encoding="utf-8")

    atomic_write_dir(path, write)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((p for p in (run_dir / "checkpoints").glob("step-*") if (p / STATE_NAME).exists()),
                   key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _prune(run_dir: Path, keep: int) -> None:
    found = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the loop
class Trainer:
    def __init__(self, cfg: TrainConfig, engine: E2LLM | None = None, data: TrainData | None = None):
        self.cfg = cfg
        joined_before = dist.is_initialized()
        # one device decision, checked before anything loads: "cuda" / "auto" under torchrun is
        # the local rank's GPU; NCCL joins there, gloo for CPU runs
        self.device = device_for(cfg.device)
        self.rank, self.world = dist_info(self.device, cfg.process_group_timeout_s)
        self.owns_process_group = dist.is_initialized() and not joined_before  # joined here: train() leaves it
        # data preparation exchanges host objects: over gloo, not through GPU memory with NCCL
        self._cpu_group = None
        if self.world > 1 and dist.get_backend() != "gloo":
            self._cpu_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=cfg.process_group_timeout_s))
        torch.manual_seed(cfg.seed)
        # model.decoder.quantization holds with init_from too (like optim.backbone_dtype): it says
        # how this run stores the frozen base, and the checkpoint's LoRA tensors fit either base
        quantization = engine.config.decoder.quantization if engine is not None else cfg.model.decoder.quantization
        check_parallelism(cfg.parallelism, quantization)  # before minutes of loading
        if engine is None:  # built on the CPU: FSDP moves the decoder to the GPU a layer at a time
            dt = cfg.optim.backbone_dtype
            # except a 4-bit decoder: bitsandbytes quantizes it as it loads onto the GPU
            load = dict(dtype=dt, quantization=quantization, device=self.device if quantization != "none" else None)
            engine = E2LLM.from_pretrained(cfg.init_from, **load) if cfg.init_from else E2LLM.build(cfg.model, **load)
            if cfg.init_from:
                for key in READING_KEYS:
                    if key in cfg.model.model_fields_set:
                        setattr(engine.config, key, getattr(cfg.model, key))
        self.engine = engine
        fsdp = dist.is_initialized() and cfg.parallelism == "fsdp"
        if fsdp:  # everything but the decoder's layers now; shard_decoder moves each layer as it splits it
            move_all_but(self.engine, decoder_layers(self.engine._decoder_base), self.device)
        else:
            self.engine.to(self.device)
        self.groups = set_trainable(self.engine, cfg.trainable)
        for g in self.groups:  # trained tensors and their optimizer state in float32, whatever the backbones
            for p in g["params"]:
                p.data = p.data.float()
        if cfg.optim.gradient_checkpointing:  # recompute activations in backward: bigger batches fit
            self.engine.enable_gradient_checkpointing()
        if fsdp:  # replaces the decoder's parameters: collect them after
            bf16 = self.engine._decoder_base.get_input_embeddings().weight.dtype == torch.bfloat16
            units = shard_decoder(self.engine._decoder_base, self.world, self.device, torch.bfloat16 if bf16 else None)
            if self.rank == 0:
                print(f"e2llm train: fsdp shards the decoder's {units} layers over {self.world} processes")
            self.groups = set_trainable(self.engine, cfg.trainable)
        if cfg.optim.batch_size // cfg.optim.grad_accum < self.world:
            raise InputError(f"optim.batch_size / grad_accum ({cfg.optim.batch_size} / {cfg.optim.grad_accum}) must be at least "
                             f"the number of processes ({self.world}) so every process gets samples")
        prompt = self.engine.config.prompt
        data = data or build_data(cfg.data, prompt.reconstruct_question, prompt.continue_question)
        self._tokenize(data)
        self.run_dir = Path(cfg.output_dir)
        # recon_trains_decoder false: reconstruction micro-batches run the decoder's LoRA from
        # detached weights (gradients_kept_out), so the decoder is no part of their graph
        self.decoder_linears = [] if cfg.objective.recon_trains_decoder else \
            trained_linears(self.engine.decoder, "objective.recon_trains_decoder: false")
        self.loss_fn = ObjectiveLoss(self.engine, cfg.objective.reason_trains_encoder, cfg.objective.min_spread)
        self.model = Parallel(self.loss_fn, cfg.parallelism, self.world, self.device,
                              partial_graphs=not (cfg.objective.reason_trains_encoder and cfg.objective.recon_trains_decoder))
        o, ob = cfg.optim, cfg.objective
        self.batches = StepBatches(self.recon_tok, self.reason_tok, o.batch_size, o.grad_accum, cfg.seed, ob.recon_weight,
                                   ob.recon_only_steps if ob.reason else None,
                                   not (ob.recon_trains_decoder and ob.reason_trains_encoder),  # kinds in separate micro-batches
                                   self.rank, self.world, *pad_ids(self.engine), curriculum_steps=ob.curriculum_steps)
        self.opt = torch.optim.AdamW([dict(g, lr=(o.adapter_lr or o.lr) if g["name"] == "adapter" else o.lr) for g in self.groups],
                                     lr=o.lr, weight_decay=o.weight_decay)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        amp = o.autocast == "bf16" or (o.autocast == "auto" and torch.device(self.device).type == "cuda")
        # bf16 matmuls over float32 master weights (LoRA, adapter, optimizer state stay float32)
        self.autocast = (lambda: torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def _tokenize(self, data: TrainData) -> None:
        """Tokenize and chunk the training samples once (read from the disk cache when this data,
        these tokenizers and this chunking were seen before), and drop samples whose decoder
        sequence exceeds the window. The first process writes the cache; the others then read it."""
        cache = self.cfg.data.cache_dir
        cache = None if cache == "off" else (cache or default_cache_dir())
        window = self.engine.window_tokens

        def keep(samples, what, tok: Tokenized | None = None):
            tok = tok if tok is not None else tokenize(self.engine, samples)
            rows = fits(tok, window)
            if len(rows) < len(samples) and self.rank == 0:
                print(f"e2llm train: skipped {len(samples) - len(rows)} {what} samples longer than the decoder window "
                      f"({window} tokens)")
            return [samples[i] for i in rows], (tok.select(rows) if len(rows) < len(samples) else tok)

        toks = {}
        for name in ("recon_train", "reason_train"):
            toks[name], hit = self._shared_tokenize(getattr(data, name), cache)
            if self.rank == 0 and cache is not None:
                print(f"e2llm train: {name} tokenized {'(from the cache)' if hit else '(cached for next time)'}")
        recon_train, self.recon_tok = keep(data.recon_train, "reconstruction", toks["recon_train"])
        reason_train, self.reason_tok = keep(data.reason_train, "reasoning", toks["reason_train"])
        self.data = TrainData(reason_train, keep(data.reason_val, "reasoning validation")[0],
                              recon_train, keep(data.recon_val, "reconstruction validation")[0])

    def _shared_tokenize(self, samples: Sequence[Sample], cache: str | Path | None) -> tuple[Tokenized, bool]:
        """``tokenize(samples)`` read from the cache, or made with each process tokenizing its
        share (a contiguous slice; hybrid samples' retrieval runs the encoder) and the arrays
        exchanged: no process waits for another's whole pass, and the first writes the cache."""
        from safetensors.numpy import load_file, save_file

        path = None if cache is None else Path(cache).expanduser() / f"{cache_key(self.engine, samples)}.safetensors"
        hit = torch.tensor([int(path is not None and path.exists())])
        if self.world > 1:  # all take the same branch, though the file may appear while they look
            dist.all_reduce(hit, op=dist.ReduceOp.MIN, group=self._cpu_group)
        if hit.item():
            return Tokenized(**load_file(str(path))), True
        if self.world == 1:
            tok = tokenize(self.engine, samples)
        else:
            lo, hi = len(samples) * self.rank // self.world, len(samples) * (self.rank + 1) // self.world
            shares: list = [None] * self.world
            dist.all_gather_object(shares, tokenize(self.engine, samples[lo:hi]), group=self._cpu_group)
            tok = _join(shares)
        if self.rank == 0 and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file(tok.arrays(), str(tmp))
            os.replace(tmp, path)  # atomic: a killed run leaves no half-written cache
        return tok, False

    def _step_samples(self, step: int) -> list[Sample]:
        """The step's samples (all processes'), reconstruction first: what StepBatches collates."""
        return [(self.data.recon_train if kind == 0 else self.data.reason_train)[i] for kind, i in self.batches.step_rows(step)]

    def _loader(self, start: int):
        """Steps start.. as collated micro-batches, computed ahead by DataLoader workers."""
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(self.batches, batch_size=None, sampler=range(start, self.cfg.optim.max_steps),
                                           num_workers=workers, prefetch_factor=4 if workers else None,
                                           pin_memory=torch.device(self.device).type == "cuda")

    def _resume(self) -> int:
        ck = latest_checkpoint(self.run_dir)
        if ck is None and self.cfg.continue_from:
            return self._continue(Path(self.cfg.continue_from))
        if ck is None:
            return 0
        state = json.loads((ck / STATE_NAME).read_text())
        diff = config_differences(TrainConfig.model_validate(state["train_config"]), self.cfg,
                                  ignore=RESUME_MAY_CHANGE + ("continue_from",))
        if diff:
            raise InputError(f"cannot resume from {ck}: it was written by a different config ({', '.join(diff[:6])} differ); "
                             "use the same config or another output_dir")
        current = self.engine.trained_state_dict()
        tensors = {k: like(v, current[k]) if k in current else v for k, v in load_file(str(ck / WEIGHTS_NAME)).items()}
        self.engine.load_trained_state_dict(tensors, source=str(ck))
        _load_optimizer(self.opt, load_file(str(ck / OPTIM_NAME)), state["optimizer"])
        return state["step"]

    def _continue(self, kept: Path) -> int:
        """Start from a kept run (weights, step and log, no optimizer state): its step, a fresh
        optimizer re-warmed from there, its log copied in so the curves go on."""
        try:
            state = json.loads((kept / STATE_NAME).read_text())
            tensors = load_file(str(kept / WEIGHTS_NAME))
        except (OSError, ValueError) as e:
            raise InputError(f"continue_from: cannot read the kept run {kept} ({e}); keep it again with "
                             "scripts/keep_run.py, or drop continue_from") from None
        diff = config_differences(TrainConfig.model_validate(state["train_config"]), self.cfg,
                                  ignore=RESUME_MAY_CHANGE + ("continue_from", "output_dir"))
        if diff:
            raise InputError(f"continue_from {kept}: it was written by a different config ({', '.join(diff[:6])} differ); "
                             "use the config it was trained with")
        current = self.engine.trained_state_dict()
        self.engine.load_trained_state_dict({k: like(v, current[k]) if k in current else v for k, v in tensors.items()},
                                            source=str(kept))
        if self.rank == 0 and (kept / "log.jsonl").exists() and not (self.run_dir / "log.jsonl").exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kept / "log.jsonl", self.run_dir / "log.jsonl")
        self.rewarm_from = state["step"]
        return state["step"]

    rewarm_from: int | None = None  # the step a continued run's fresh optimizer started at

    def train(self, resume: bool = False) -> Path:
        """Train to optim.max_steps; return the final model's folder. A process group this trainer
        joined itself (under torchrun) is left when it returns, so train() runs once per process."""
        try:
            with attention_without_cudnn(self.device):
                return self._train(resume)
        finally:
            self.engine.eval()  # as it came: inference after training needs no dropout or recomputation
            if self.owns_process_group:
                leave_process_group()

    def _train(self, resume: bool) -> Path:
        from tqdm import tqdm

        cfg, o = self.cfg, self.cfg.optim
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = self._resume() if resume else 0
        log = _Log(self.run_dir / "log.jsonl", start, enabled=self.rank == 0)
        if self.rank == 0:
            print(f"e2llm train: {self.data.describe()}; {sum(p.numel() for g in self.groups for p in g['params']):,} "
                  f"trainable parameters; {self.world} process(es) on {self.device}; steps {start}..{o.max_steps}")
            print(f"e2llm train: {self.batches.describe(start)}")
        bf16 = self.autocast is not contextlib.nullcontext or o.backbone_dtype == "bfloat16"  # the products' dtype
        meter = StepMeter(self.engine, self.batches, start, self.world, torch.bfloat16 if bf16 else torch.float32)
        if self.rank == 0:
            print(f"e2llm train: {meter.describe()}")
        # Training mode for steps (see train_mode), eval mode for validation and generation.
        train_mode(self.engine, cfg.backbone_dropout)
        t_start = time.perf_counter()
        nonfinite_run = nonfinite_total = 0
        bar = tqdm(range(start, o.max_steps), initial=start, total=o.max_steps, desc="train", disable=self.rank != 0)
        t0 = time.perf_counter()  # a step's time includes waiting for its batch
        for step, parts in zip(bar, self._loader(start)):
            rewarm = 1.0 if self.rewarm_from is None else min(1.0, (step - self.rewarm_from + 1) / max(1, o.warmup_steps))
            for g, base in zip(self.opt.param_groups, self.base_lrs):
                g["lr"] = base * lr_at(step, cfg) * rewarm
            torch.manual_seed(step_seed(cfg.seed, step, self.rank))  # dropout (LoRA's; the backbones' if on)
            # ce recon, tokens recon, ce reason, tokens reason, spread penalty (this process), on the
            # model's device: no host sync per micro-batch, and NCCL reduces only GPU tensors
            sums = torch.zeros(5, device=self.device)
            for j, part in enumerate(parts):
                if part is None:  # this process has no sample in this micro-batch
                    continue
                batch = to_device(part, self.device)
                # reconstruction kept from the decoder: its LoRA is out of this micro-batch's graph
                # (parts hold one kind when so configured); forward and backward inside
                keep_out = gradients_kept_out(self.decoder_linears) if self.decoder_linears and not part["has_reason"] \
                    else contextlib.nullcontext()
                with self.model.no_sync(skip=j < len(parts) - 1), keep_out:
                    with self.autocast():
                        ce, count = self.model(batch)
                        loss = (ce * batch["weight"]).sum() * self.world  # DDP averages: undo the /world
                        if self.loss_fn.spread_penalty is not None:  # a mean over micro-batches (and, by DDP, processes)
                            loss = loss + cfg.objective.spread_weight * self.loss_fn.spread_penalty / len(parts)
                            sums[4] += self.loss_fn.spread_penalty.detach() / len(parts)
                    loss.backward()
                recon = (batch["kind"] == 0).to(ce.dtype)  # (B,)
                ce = ce.detach()
                sums[:4] += torch.stack([(ce * recon).sum(), (count * recon).sum(), (ce * (1 - recon)).sum(), (count * (1 - recon)).sum()])
            params = [p for g in self.groups for p in g["params"]]
            self.model.finish_backward(params)
            grad_norm = self.model.clip_grad_norm(params, o.clip_norm)  # the same on every process
            if math.isfinite(grad_norm):
                self.opt.step()
                nonfinite_run = 0
            else:  # skip the update: one NaN step would turn every weight into NaN
                nonfinite_run, nonfinite_total = nonfinite_run + 1, nonfinite_total + 1
                if nonfinite_run >= o.max_nonfinite_steps:
                    ck = latest_checkpoint(self.run_dir)
                    raise TrainingError(f"training diverged: {nonfinite_run} steps in a row (up to step {step + 1}) gave NaN or "
                                        f"inf gradients; lower optim.lr / optim.adapter_lr, or train the backbones in float32 "
                                        f"(optim.backbone_dtype); the last good checkpoint is {ck or 'none yet'}")
            self.opt.zero_grad(set_to_none=True)
            sums = self.model.all_reduce(sums).cpu()
            tok_s = float(sums[1] + sums[3]) / (time.perf_counter() - t0)
            rec = {"step": step + 1, "lr": self.opt.param_groups[0]["lr"], "grad_norm": float(grad_norm), "tokens_per_s": round(tok_s, 1),
                   "elapsed_s": round(time.perf_counter() - t_start, 2),  # since this process began training
                   **meter.step(parts, float(sums[1] + sums[3]), time.perf_counter() - t0)}
            if sums[1]:
                rec["loss_recon"] = float(sums[0] / sums[1])
            if sums[3]:
                rec["loss_reason"] = float(sums[2] / sums[3])
            if cfg.objective.min_spread:
                rec["spread_penalty"] = float(sums[4]) / self.world
            if nonfinite_total:
                rec["nonfinite_steps_skipped"] = nonfinite_total
            bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k.startswith("loss")} | {"tok/s": f"{tok_s:.0f}"})
            if (step + 1) % cfg.log_every == 0 or step == start:
                log.write(rec)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == o.max_steps:
                log.write({"step": step + 1, **self.validate()})
                train_mode(self.engine, cfg.backbone_dropout)  # validate() left it in eval mode
                if self.rank == 0:
                    plot_log(self.run_dir / "log.jsonl", self.run_dir / "loss.png")
            if (step + 1) % cfg.save_every == 0 or step + 1 == o.max_steps:
                save_training_state(self.run_dir / "checkpoints" / f"step-{step + 1:06d}", self.engine, self.opt, step + 1, cfg,
                                    write=self.rank == 0)
                if self.rank == 0:
                    _prune(self.run_dir, cfg.keep_last)
                self._barrier()
            t0 = time.perf_counter()
        final = self.run_dir / "model"
        tensors = whole_trained_state(self.engine)
        if self.rank == 0:
            self.engine.config.trained = True
            self.engine.save_pretrained(final, dtype=cfg.save_dtype, tensors=tensors)
        self._barrier()
        return final

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss per objective and a small greedy generation check, in eval mode (the
        engine is left in it). Under DDP only the first process generates; under FSDP all do,
        from the sharded decoder itself (a merged copy of a sharded model is not a model)."""
        self.engine.eval()
        self.engine.cache.clear()  # weights changed since the last look
        try:
            return self._validate()
        finally:
            free_inference_copies(self.engine)

    def _validate(self) -> dict:
        out = {}
        for kind, samples in (("recon", self.data.recon_val), ("reason", self.data.reason_val)):
            if samples:
                out[f"val_loss_{kind}"] = mean_loss(self.loss_fn, samples)
        if len(self.data.recon_val) > 1:  # near 0: every chunk gets the same soft prompt (collapse)
            out["val_soft_prompt_spread"] = mean_spread(self.engine, self.data.recon_val)
            # What the soft prompts carry of their own chunk: the loss given another held-out
            # chunk's soft prompt minus the loss given its own (0 for a learned fixed prompt).
            out["val_recon_content"] = mean_loss(self.loss_fn, swap_contexts(self.data.recon_val)) - out["val_loss_recon"]
        checks = self.data.reason_val[: self.cfg.num_generation_checks]
        if checks and (self.rank == 0 or self.model.sharded):  # sharded: every process takes part in generating
            fast, self.engine.fast_decode = self.engine.fast_decode, self.engine.fast_decode and not self.model.sharded
            try:
                answers = self.engine.generate_batch([s.prompt for s in checks], [s.context for s in checks],
                                                     raw_texts=[s.raw_texts for s in checks], raw_top_n=0, max_new_tokens=24)
            finally:
                self.engine.fast_decode = fast
            out["val_answer_contained"] = sum(_norm(s.answer) in _norm(a) for s, a in zip(checks, answers)) / len(checks)
        return out


def attention_without_cudnn(device) -> contextlib.AbstractContextManager:
    """On CUDA, attention without the cuDNN kernels. Since torch 2.11 their backward pass gives NaN
    query gradients on H100/H200 when an attention mask is passed, the padded length is 64 mod
    128 and a row's log-sum-exp is very negative (pytorch/pytorch#196678), which left-padded
    rows can be. On one H200 a bf16 run's gradients turned NaN at step 60 with a finite loss
    (docs/research-log.md, "A GPU try of the content-first recipe"). The other kernels compute the same thing."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


class _Log:
    """JSONL log; a resumed run drops entries past the checkpoint it resumed from."""

    def __init__(self, path: Path, start_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [l for l in path.read_text().splitlines() if l.strip() and _step_of(l) <= start_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(l + "\n" for l in kept))
            os.replace(tmp, path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return 1 << 60  # a half-written last line from a killed run: drop it


def plot_log(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(l) for l in log_path.read_text().splitlines() if l.strip()]
    content = [(r["step"], r["val_recon_content"]) for r in recs if "val_recon_content" in r]
    fig, axes = plt.subplots(1, 2 if content else 1, figsize=(12 if content else 7, 4), squeeze=False)
    ax = axes[0, 0]
    for key, style in (("loss_recon", "-"), ("loss_reason", "-"), ("val_loss_recon", "o--"), ("val_loss_reason", "o--")):
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if content:
        ax = axes[0, 1]
        ax.plot(*zip(*content), "o-")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out content (nats / token)")
        ax.set_title("loss with another chunk's soft prompt - with its own", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
