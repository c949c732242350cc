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
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_dir, refuse_nonfinite
from ..errors import InputError, TrainingError
from ..model import E2LLM
from ..prompts import PromptLayout
from ..softprompts import SoftPrompts, soft_prompt_spread, spread
from ..splice import IGNORE_INDEX, splice
from .config import TrainConfig, config_differences
from .data import Sample, TrainData, build_data, sample_indices
from .distributed import Parallel, device_for, dist_info, full, leave_process_group, like, shard_decoder

STATE_NAME, OPTIM_NAME = "trainer_state.json", "optimizer.safetensors"


# --------------------------------------------------------------------------- the loss
class ObjectiveLoss(nn.Module):
    """Per-sample summed cross-entropy and target-token counts for a list of samples.

    An nn.Module so DDP can wrap it: the engine is held, not subclassed."""

    def __init__(self, engine: E2LLM, reason_trains_encoder: bool = True, min_spread: float = 0.0):
        super().__init__()
        self.engine = engine
        self.reason_trains_encoder = reason_trains_encoder
        self.min_spread = min_spread
        self.spread_penalty = None  # max(0, min_spread - spread) of the last call's soft prompts, when asked for

    def forward(self, samples: Sequence[Sample], with_context: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """with_context=False: the same prompts and targets without the soft prompts (a baseline)."""
        e = self.engine
        chunk_lists = e.chunk_many([s.context for s in samples]) if with_context else [[] for _ in samples]
        texts = [c.text for cl in chunk_lists for c in cl]
        encoder_grad = self.reason_trains_encoder or any(s.kind == "recon" for s in samples)
        vectors = e.soft_prompts(texts, encoder_grad) if texts else None  # (sum N, k, Dd), with grad
        self.spread_penalty = None
        if self.min_spread and vectors is not None and len(vectors) > 1 and torch.is_grad_enabled():
            self.spread_penalty = (self.min_spread - spread(vectors)).clamp(min=0)
        pieces, start = [], 0
        for s, cl in zip(samples, chunk_lists):
            groups = SoftPrompts(vectors[start:start + len(cl)], cl).groups() if cl else []
            start += len(cl)
            ids = e.layout.ids(s.prompt, raw_passages(e, s, cl))
            pieces.append(e.layout.pieces(ids, groups, e.layout.answer_ids(s.answer)))
        # Left padding ends every answer at the last position, so only the last positions need
        # logits: (B, longest answer, V) instead of (B, T, V), which is most of a step's memory.
        batch = splice(pieces, e._decoder_base.get_input_embeddings(), pad_left=True)
        labels = batch.labels[:, 1:]  # position t predicts token t + 1
        first = int((labels != IGNORE_INDEX).any(0).nonzero()[0])  # earliest predicting position
        target = labels[:, first:]  # (B, n)
        logits = e.decoder(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, logits_to_keep=target.shape[1] + 1).logits[:, :-1]  # (B, n, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        return ce.view(target.shape).sum(1), (target != IGNORE_INDEX).sum(1)  # (B,), (B,)


@torch.no_grad()
def mean_loss(loss_fn: ObjectiveLoss, samples: Sequence[Sample], with_context: bool = True, batch: int = 8) -> float:
    """Cross-entropy per target token (nats) over ``samples``, ``batch`` samples at a time."""
    ce_sum = n_sum = 0.0
    for i in range(0, len(samples), batch):
        ce, n = loss_fn(samples[i:i + batch], with_context=with_context)
        ce_sum, n_sum = ce_sum + float(ce.sum()), n_sum + float(n.sum())
    return ce_sum / max(1.0, n_sum)


@torch.no_grad()
def mean_spread(engine: E2LLM, samples: Sequence[Sample]) -> float:
    """The spread (``soft_prompt_spread``) of the soft prompts of ``samples``' contexts, each
    read as one chunk: near 0 when the adapter gives every chunk the same vector."""
    return soft_prompt_spread(engine.soft_prompts([s.context for s in samples]))


def raw_passages(engine: E2LLM, s: Sample, chunks) -> list[str]:
    return list(s.raw_texts) + [chunks[i].text for i in engine.raw_chunk_indices(s.prompt, chunks, s.raw_top_n)]


def fits_window(engine: E2LLM, s: Sample, chunks, ids) -> bool:
    """Whether the sample fits the decoder window, given its chunks and prompt ids (the caller
    computes both in bulk). Hybrid samples are bounded by their longest chunks instead of
    running retrieval here (that would encode every chunk at start-up)."""
    longest = sorted((len(c.text) for c in chunks), reverse=True)[: s.raw_top_n]
    raw_bound = sum(longest) + 4 * s.raw_top_n  # a decoder token covers at least one character
    total = (PromptLayout.num_tokens(ids, len({c.doc_index for c in chunks})) + raw_bound
             + len(chunks) * engine.config.adapter.tokens_per_chunk + len(engine.layout.answer_ids(s.answer)))
    return total <= engine.window_tokens


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
        (tmp / CONFIG_NAME).write_text(engine.config.to_json(), encoding="utf-8")
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
        self.rank, self.world = dist_info()
        self.owns_process_group = dist.is_initialized() and not joined_before  # joined here: train() leaves it
        self.device = device_for(cfg.device, self.rank)
        torch.manual_seed(cfg.seed)
        if engine is None:
            dt = cfg.optim.backbone_dtype
            engine = E2LLM.from_pretrained(cfg.init_from, dtype=dt) if cfg.init_from else E2LLM.build(cfg.model, dtype=dt)
        self.engine = engine.to(self.device)
        self.groups = set_trainable(self.engine, cfg.trainable)
        for g in self.groups:  # trained tensors and their optimizer state in float32, whatever the backbones
            for p in g["params"]:
                p.data = p.data.float()
        if self.world > 1 and cfg.parallelism == "fsdp":  # replaces the decoder's parameters: collect them after
            bf16 = self.engine._decoder_base.get_input_embeddings().weight.dtype == torch.bfloat16
            units = shard_decoder(self.engine._decoder_base, self.world, self.device, torch.bfloat16 if bf16 else None)
            if self.rank == 0:
                print(f"e2llm train: fsdp shards the decoder's {units} layers over {self.world} processes")
            self.groups = set_trainable(self.engine, cfg.trainable)
        if cfg.optim.batch_size // cfg.optim.grad_accum < self.world:
            raise InputError(f"optim.batch_size / grad_accum ({cfg.optim.batch_size} / {cfg.optim.grad_accum}) must be at least "
                             f"the number of processes ({self.world}) so every process gets samples")
        data = data or build_data(cfg.data, self.engine.config.prompt.reconstruct_question)
        self.data = self._filter(data)
        self.run_dir = Path(cfg.output_dir)
        self.decoder_lora = [p for n, p in self.engine.named_parameters() if p.requires_grad and n.startswith("decoder.")]
        self.loss_fn = ObjectiveLoss(self.engine, cfg.objective.reason_trains_encoder, cfg.objective.min_spread)
        self.model = Parallel(self.loss_fn, cfg.parallelism, self.world, self.device,
                              partial_graphs=not cfg.objective.reason_trains_encoder)
        o = cfg.optim
        self.opt = torch.optim.AdamW([dict(g, lr=(o.adapter_lr or o.lr) if g["name"] == "adapter" else o.lr) for g in self.groups],
                                     lr=o.lr, weight_decay=o.weight_decay)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]

    def _filter(self, data: TrainData) -> TrainData:
        def keep(samples, what):
            kept, prompt_ids = [], {}  # reconstruction samples all share one prompt: template it once
            for i in range(0, len(samples), 256):  # chunked in batches: one tokenizer call each
                part = samples[i:i + 256]
                for s, chunks in zip(part, self.engine.chunk_many([s.context for s in part])):
                    key = (s.prompt, s.raw_texts)
                    if key not in prompt_ids:
                        prompt_ids[key] = self.engine.layout.ids(s.prompt, s.raw_texts)
                    if fits_window(self.engine, s, chunks, prompt_ids[key]):
                        kept.append(s)
            if len(kept) < len(samples) and self.rank == 0:
                print(f"e2llm train: skipped {len(samples) - len(kept)} {what} samples longer than the decoder window "
                      f"({self.engine.window_tokens} tokens)")
            return kept

        return TrainData(keep(data.reason_train, "reasoning"), keep(data.reason_val, "reasoning validation"),
                         keep(data.recon_train, "reconstruction"), keep(data.recon_val, "reconstruction validation"))

    def _step_samples(self, step: int) -> list[Sample]:
        cfg, d = self.cfg, self.data
        bs = cfg.optim.batch_size
        out = [d.recon_train[i] for i in sample_indices(len(d.recon_train), step, bs, cfg.seed, "recon")]
        if cfg.objective.reason and step >= cfg.objective.recon_only_steps:
            out += [d.reason_train[i] for i in sample_indices(len(d.reason_train), step, bs, cfg.seed, "reason")]
        return out

    def _micro_batches(self, samples: Sequence[Sample]) -> list[list[int]]:
        """Sample indices per micro-batch, each of similar length (padding to the longest sample
        is what costs here). Where the objectives reach different parameters (without
        recon_trains_decoder or reason_trains_encoder), reconstruction samples get their own
        micro-batches, first: their gradient can be kept from the decoder's LoRA, and QA
        micro-batches can skip the encoder's backward pass."""
        micro = math.ceil(len(samples) / self.cfg.optim.grad_accum)
        by_length = lambda idx: sorted(idx, key=lambda i: self._approx_tokens(samples[i]))  # noqa: E731
        if self.cfg.objective.recon_trains_decoder and self.cfg.objective.reason_trains_encoder:
            groups = [by_length(range(len(samples)))]
        else:
            groups = [by_length([i for i, s in enumerate(samples) if s.kind == kind]) for kind in ("recon", "reason")]
        return [g[i:i + micro] for g in groups for i in range(0, len(g), micro)]

    def _weights(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Per-sample loss weights: objective weight / that objective's global target tokens."""
        lam = self.cfg.objective.recon_weight
        tokens = {"recon": 0, "reason": 0}
        for s in samples:
            tokens[s.kind] += len(self.engine.layout.answer_ids(s.answer))
        return torch.tensor([(lam if s.kind == "recon" else 1.0) / tokens[s.kind] for s in samples])

    def _approx_tokens(self, s: Sample) -> int:
        """Decoder positions a sample takes, roughly (characters / 4), for length bucketing."""
        chars_per_soft = 4 * self.engine.config.chunking.tokens_per_chunk / self.engine.config.adapter.tokens_per_chunk
        raw_chars = sum(map(len, s.raw_texts)) + s.raw_top_n * 4 * self.engine.config.chunking.tokens_per_chunk
        return int((len(s.prompt) + len(s.answer) + raw_chars) / 4 + len(s.context) / chars_per_soft)

    def _resume(self) -> int:
        ck = latest_checkpoint(self.run_dir)
        if ck is None:
            return 0
        state = json.loads((ck / STATE_NAME).read_text())
        diff = config_differences(TrainConfig.model_validate(state["train_config"]), self.cfg)
        if diff:
            raise InputError(f"cannot resume from {ck}: it was written by a different config ({', '.join(diff[:6])} differ); "
                             "use the same config or another output_dir")
        current = self.engine.trained_state_dict()
        tensors = {k: like(v, current[k]) if k in current else v for k, v in load_file(str(ck / WEIGHTS_NAME)).items()}
        self.engine.load_trained_state_dict(tensors, source=str(ck))
        _load_optimizer(self.opt, load_file(str(ck / OPTIM_NAME)), state["optimizer"])
        return state["step"]

    def train(self, resume: bool = False) -> Path:
        """Train to optim.max_steps; return the final model's folder. A process group this trainer
        joined itself (under torchrun) is left when it returns, so train() runs once per process."""
        try:
            with attention_without_cudnn(self.device):
                return self._train(resume)
        finally:
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
        # The engine stays in eval mode: backbone dropout off, so a step is a pure function of
        # (weights, samples) and resumed or multi-process runs reproduce single-process ones.
        t_start = time.perf_counter()
        nonfinite_run = nonfinite_total = 0
        bar = tqdm(range(start, o.max_steps), initial=start, total=o.max_steps, desc="train", disable=self.rank != 0)
        for step in bar:
            t0 = time.perf_counter()
            for g, base in zip(self.opt.param_groups, self.base_lrs):
                g["lr"] = base * lr_at(step, cfg)
            samples = self._step_samples(step)
            weights = self._weights(samples)
            sums = torch.zeros(5)  # ce recon, tokens recon, ce reason, tokens reason, spread penalty (this process)
            parts = self._micro_batches(samples)
            for j, idx in enumerate(parts):
                mine = idx[self.rank::self.world]
                sync = j == len(parts) - 1
                with self.model.no_sync(skip=not sync):
                    ce, count = self.model([samples[i] for i in mine])
                    loss = (ce * weights[mine].to(ce.device)).sum() * self.world  # DDP averages: undo the /world
                    if self.loss_fn.spread_penalty is not None:  # a mean over micro-batches (and, by DDP, processes)
                        loss = loss + cfg.objective.spread_weight * self.loss_fn.spread_penalty / len(parts)
                        sums[4] += float(self.loss_fn.spread_penalty.detach()) / len(parts)
                loss.backward()
                for c, n, i in zip(ce.detach().cpu(), count.cpu(), mine):
                    k = 0 if samples[i].kind == "recon" else 2
                    sums[k] += c
                    sums[k + 1] += n
                if not cfg.objective.recon_trains_decoder and all(samples[i].kind == "recon" for i in idx):
                    for p in self.decoder_lora:  # recon parts come first: drop what they gave the decoder
                        p.grad = None
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
            if self.world > 1:
                dist.all_reduce(sums)
            tok_s = float(sums[1] + sums[3]) / (time.perf_counter() - t0)
            rec = {"step": step + 1, "lr": self.opt.param_groups[0]["lr"], "grad_norm": float(grad_norm), "tokens_per_s": round(tok_s, 1),
                   "elapsed_s": round(time.perf_counter() - t_start, 2)}  # since this process began training
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
                if self.rank == 0:
                    plot_log(self.run_dir / "log.jsonl", self.run_dir / "loss.png")
            if (step + 1) % cfg.save_every == 0 or step + 1 == o.max_steps:
                save_training_state(self.run_dir / "checkpoints" / f"step-{step + 1:06d}", self.engine, self.opt, step + 1, cfg,
                                    write=self.rank == 0)
                if self.rank == 0:
                    _prune(self.run_dir, cfg.keep_last)
                self._barrier()
        final = self.run_dir / "model"
        tensors = whole_trained_state(self.engine)
        if self.rank == 0:
            self.engine.config.trained = True
            self.engine.save_pretrained(final, dtype=cfg.save_dtype, tensors=tensors)
        self._barrier()
        return final

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss per objective and a small greedy generation check."""
        self.engine.cache.clear()  # weights changed since the last look
        out = {}
        for kind, samples in (("recon", self.data.recon_val), ("reason", self.data.reason_val)):
            if samples:
                out[f"val_loss_{kind}"] = mean_loss(self.loss_fn, samples)
        if len(self.data.recon_val) > 1:  # near 0: every chunk gets the same soft prompt (collapse)
            out["val_soft_prompt_spread"] = mean_spread(self.engine, self.data.recon_val)
        checks = self.data.reason_val[: self.cfg.num_generation_checks]
        if checks and (self.rank == 0 or self.model.sharded):  # sharded: every process takes part in generating
            answers = self.engine.generate_batch([s.prompt for s in checks], [s.context for s in checks],
                                                 raw_texts=[s.raw_texts for s in checks], raw_top_n=0, max_new_tokens=24)
            out["val_answer_contained"] = sum(_norm(s.answer) in _norm(a) for s, a in zip(checks, answers)) / len(checks)
        return out


def attention_without_cudnn(device) -> contextlib.AbstractContextManager:
    """On CUDA, attention without the cuDNN kernels. Since torch 2.11 their backward pass gives NaN
    query gradients on H100/H200 when an attention mask is passed, the padded length is 64 mod
    128 and a row's log-sum-exp is very negative (pytorch/pytorch#196678), which left-padded
    rows can be. On one H200 a bf16 run's gradients turned NaN at step 60 with a finite loss
    (README "A GPU try of the content-first recipe"). The other kernels compute the same thing."""
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
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss_recon", "-"), ("loss_reason", "-"), ("val_loss_recon", "o--"), ("val_loss_reason", "o--")):
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
