"""Samples tokenized and chunked once, cached on disk, and collated into step tensors.

A training step used to chunk, tokenize, template and splice every sample in Python on the
process that drives the GPU. Here that work is done once per data set:

    samples ──tokenize()──▶ Tokenized (flat int arrays) ──cache (safetensors)──▶ disk
    step ──StepBatches[step] (DataLoader worker)──▶ micro-batches of padded tensors
    micro-batch ──batch_loss() (trainer)──▶ encoder ids → soft prompts → inputs_embeds → loss

Each sample's decoder sequence is stored with ``SOFT`` (-1) where a soft token goes, built
from the same ``PromptLayout.pieces`` as inference, so a collated row equals ``splice``'s
(tests/test_train.py checks it). Hybrid samples' raw chunks are picked here, once: retrieval
uses the encoder without its LoRA, which never trains.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..model import encoder_max_tokens
from ..splice import IGNORE_INDEX, Soft
from .data import Sample, sample_indices

SOFT = -1  # a soft-token slot in a stored decoder sequence
FORMAT = 1  # bump when the stored arrays change meaning
KINDS = ("recon", "reason")


@dataclass
class Tokenized:
    """Samples as flat arrays (ragged rows: values + offsets); row i of a ragged array is
    ``values[offsets[i]:offsets[i + 1]]``."""

    kind: np.ndarray  # (S,) int8: 0 recon, 1 reason
    dec_ids: np.ndarray  # (sum T_s,) int32 decoder ids, SOFT at soft slots, answer last
    dec_offsets: np.ndarray  # (S + 1,) int64
    answer_tokens: np.ndarray  # (S,) int32: the last answer_tokens ids of a row are targets
    sample_chunks: np.ndarray  # (S + 1,) int64: sample s owns chunks sample_chunks[s]:[s + 1]
    enc_ids: np.ndarray  # (sum L_c,) int32 encoder ids of every chunk (special tokens included)
    enc_offsets: np.ndarray  # (C + 1,) int64

    def __len__(self) -> int:
        return len(self.kind)

    def length(self, s: int) -> int:
        return int(self.dec_offsets[s + 1] - self.dec_offsets[s])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def select(self, rows: Sequence[int]) -> "Tokenized":
        """The given samples only, in that order."""
        rows = list(rows)
        dec = [self.dec_ids[self.dec_offsets[s]:self.dec_offsets[s + 1]] for s in rows]
        chunks = [range(self.sample_chunks[s], self.sample_chunks[s + 1]) for s in rows]
        enc = [self.enc_ids[self.enc_offsets[c]:self.enc_offsets[c + 1]] for r in chunks for c in r]
        return Tokenized(self.kind[rows], _cat(dec, np.int32), _offsets(map(len, dec)), self.answer_tokens[rows],
                         _offsets(map(len, chunks)), _cat(enc, np.int32), _offsets(map(len, enc)))


def _offsets(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(list(lengths), dtype=np.int64)]).astype(np.int64)


def _cat(parts, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


# --------------------------------------------------------------------------- tokenize
def raw_passages(engine, s: Sample, chunks) -> list[str]:
    """A sample's raw passages: its own, then (hybrid) its n chunks most similar to the prompt, as at inference."""
    return list(s.raw_texts) + [chunks[i].text for i in engine.raw_chunk_indices(s.prompt, chunks, s.raw_top_n)]


def tokenize(engine, samples: Sequence[Sample], with_context: bool = True, batch: int = 256) -> Tokenized:
    """Chunk, retrieve (hybrid), template and tokenize samples, in batched tokenizer calls."""
    k = engine.config.adapter.tokens_per_chunk
    max_len = encoder_max_tokens(engine.config)  # as the engine encodes
    kind, dec, answers, chunk_counts, enc = [], [], [], [], []
    prompt_ids: dict = {}  # reconstruction samples all share one prompt: template it once
    for i in range(0, len(samples), batch):
        part = samples[i:i + batch]
        chunk_lists = engine.chunk_many([s.context for s in part]) if with_context else [[] for _ in part]
        texts = [c.text for cl in chunk_lists for c in cl]
        if texts:
            enc += engine.encoder_tokenizer(texts, truncation=True, max_length=max_len, verbose=False)["input_ids"]
        for s, cl in zip(part, chunk_lists):
            key = (s.prompt, tuple(raw_passages(engine, s, cl)))
            if key not in prompt_ids:
                prompt_ids[key] = engine.layout.ids(s.prompt, key[1])
            groups, start = [], 0  # soft tokens per document, as SoftPrompts.groups() makes them
            for j in range(1, len(cl) + 1):
                if j == len(cl) or cl[j].doc_index != cl[start].doc_index:
                    groups.append(torch.empty((j - start) * k, 0))
                    start = j
            answer = engine.layout.answer_ids(s.answer)
            pieces = engine.layout.pieces(prompt_ids[key], groups, answer)
            dec.append([SOFT] * p.vectors.shape[0] if isinstance(p, Soft) else list(p.ids) for p in pieces)
            dec[-1] = [t for piece in dec[-1] for t in piece]
            kind.append(KINDS.index(s.kind))
            answers.append(len(answer))
            chunk_counts.append(len(cl))
    return Tokenized(np.asarray(kind, np.int8), _cat([np.asarray(d) for d in dec], np.int32), _offsets(map(len, dec)),
                     np.asarray(answers, np.int32), _offsets(chunk_counts),
                     _cat([np.asarray(e) for e in enc], np.int32), _offsets(map(len, enc)))


def fits(tok: Tokenized, window: int) -> list[int]:
    """Rows whose whole decoder sequence (soft tokens, raw passages and answer) fits the window."""
    return [s for s in range(len(tok)) if tok.length(s) <= window]


# --------------------------------------------------------------------------- the disk cache
def cache_key(engine, samples: Sequence[Sample]) -> str:
    """What the arrays depend on: the samples, both tokenizers, chunking, prompt, k; and the
    encoder's name (hybrid retrieval runs its frozen weights)."""
    h = hashlib.sha256()
    c = engine.config
    h.update(json.dumps({"format": FORMAT, "chunking": c.chunking.model_dump(mode="json"), "prompt": c.prompt.model_dump(mode="json"),
                         "k": c.adapter.tokens_per_chunk, "encoder": c.encoder.name_or_path}, sort_keys=True).encode())
    if any(x.raw_top_n for x in samples) and (c.ranker != "encoder" or c.ranker_candidates is not None):
        h.update(json.dumps([c.ranker, c.ranker_candidates]).encode())  # they pick hybrid samples' raw chunks
    for tok in (engine.encoder_tokenizer, engine.decoder_tokenizer):
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:  # its JSON, less the truncation/padding state that calls leave in it
            state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
            h.update(json.dumps(state, sort_keys=True).encode())
        else:
            h.update(repr(sorted(tok.get_vocab().items())).encode())
        h.update(repr(getattr(tok, "chat_template", None)).encode())
    for s in samples:
        h.update(json.dumps([s.kind, s.context, s.prompt, s.answer, list(s.raw_texts), s.raw_top_n]).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "e2llm" / "train-data"


def cached_tokenize(engine, samples: Sequence[Sample], cache_dir: str | Path | None, write: bool = True) -> tuple[Tokenized, bool]:
    """``tokenize`` from the cache where these samples were tokenized before; (arrays, hit).
    write=False: only read (other processes of a run wait for the first to write)."""
    from safetensors.numpy import load_file, save_file

    if cache_dir is None:
        return tokenize(engine, samples), False
    path = Path(cache_dir).expanduser() / f"{cache_key(engine, samples)}.safetensors"
    if path.exists():
        return Tokenized(**load_file(str(path))), True
    tok = tokenize(engine, samples)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tok.arrays(), str(tmp))
        os.replace(tmp, path)  # atomic: a killed run leaves no half-written cache
    return tok, False


# --------------------------------------------------------------------------- collate
def collate(tok: Tokenized, rows: Sequence[int], enc_pad_id: int, dec_pad_id: int, enc_pad_left: bool = False) -> dict:
    """Padded tensors for the given samples: encoder ids of all their chunks (n, L), and decoder
    rows left-padded to T (answers end at the last position), with each soft slot's index into
    the (n * k) soft tokens those chunks make."""
    chunks = [c for s in rows for c in range(tok.sample_chunks[s], tok.sample_chunks[s + 1])]
    lens = tok.enc_offsets[np.asarray(chunks, np.int64) + 1] - tok.enc_offsets[chunks] if chunks else np.zeros(0, np.int64)
    L = int(lens.max()) if chunks else 0
    enc_ids = np.full((len(chunks), L), enc_pad_id, np.int64)
    enc_mask = np.zeros((len(chunks), L), np.int64)
    for j, (c, n) in enumerate(zip(chunks, lens)):
        sl = slice(L - n, L) if enc_pad_left else slice(0, n)
        enc_ids[j, sl] = tok.enc_ids[tok.enc_offsets[c]:tok.enc_offsets[c + 1]]
        enc_mask[j, sl] = 1
    B, T = len(rows), max(tok.length(s) for s in rows)
    dec_ids = np.full((B, T), dec_pad_id, np.int64)
    soft_index = np.full((B, T), -1, np.int64)
    mask = np.zeros((B, T), np.int64)
    labels = np.full((B, T), IGNORE_INDEX, np.int64)
    soft_base = 0  # soft-token index of this row's first chunk: chunks are encoded in row order
    k = None
    for b, s in enumerate(rows):
        row = tok.dec_ids[tok.dec_offsets[s]:tok.dec_offsets[s + 1]].astype(np.int64)
        n, a = len(row), int(tok.answer_tokens[s])
        is_soft = row == SOFT
        num_soft, num_chunks = int(is_soft.sum()), int(tok.sample_chunks[s + 1] - tok.sample_chunks[s])
        if num_chunks:
            k = num_soft // num_chunks
        dec_ids[b, T - n:] = np.where(is_soft, dec_pad_id, row)
        soft_index[b, T - n:][is_soft] = soft_base + np.arange(num_soft)
        mask[b, T - n:] = 1
        labels[b, T - a:] = row[n - a:]
        soft_base += num_soft
    return {
        "enc_ids": torch.from_numpy(enc_ids), "enc_mask": torch.from_numpy(enc_mask),  # (n, L)
        "dec_ids": torch.from_numpy(dec_ids), "soft_index": torch.from_numpy(soft_index),  # (B, T)
        "attention_mask": torch.from_numpy(mask), "labels": torch.from_numpy(labels),  # (B, T)
        "kind": torch.from_numpy(tok.kind[list(rows)].astype(np.int64)),  # (B,) 0 recon, 1 reason
        "max_answer": int(tok.answer_tokens[list(rows)].max()),
        "has_recon": bool((tok.kind[list(rows)] == 0).any()), "has_reason": bool((tok.kind[list(rows)] == 1).any()),
    }


def to_device(batch: dict, device, non_blocking: bool = True) -> dict:
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


# --------------------------------------------------------------------------- a step's micro-batches
class StepBatches(torch.utils.data.Dataset):
    """Item ``step``: this process's micro-batches of that step, collated, with each sample's
    loss weight (objective weight / that objective's target tokens over the whole step, every
    process's share included). A pure function of (seed, step): DataLoader workers compute
    steps ahead, and a resumed run starts at its step."""

    def __init__(self, recon: Tokenized, reason: Tokenized, batch_size: int, grad_accum: int, seed: int,
                 recon_weight: float, reason_from_step: int | None, separate_kinds: bool, rank: int, world: int,
                 enc_pad_id: int, dec_pad_id: int, enc_pad_left: bool = False, curriculum_steps: int = 0):
        self.recon, self.reason = recon, reason
        self.curriculum_steps = curriculum_steps
        # reconstruction rows by chunk count, for the curriculum (short windows first)
        counts = np.diff(recon.sample_chunks) if len(recon) else np.zeros(0, np.int64)
        self.recon_by_chunks = np.argsort(counts, kind="stable")
        self.recon_chunks_sorted = counts[self.recon_by_chunks]
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.recon_weight, self.reason_from_step, self.separate_kinds = recon_weight, reason_from_step, separate_kinds
        self.rank, self.world = rank, world
        self.pad = (enc_pad_id, dec_pad_id, enc_pad_left)

    def __len__(self) -> int:
        return 1 << 62  # indexed by step; the trainer's sampler says which

    def step_rows(self, step: int) -> list[tuple[int, int]]:
        """(kind, row) of the step's samples: reconstruction first, then QA."""
        out = [(0, i) for i in self.recon_rows(step)]
        if self.reason_from_step is not None and step >= self.reason_from_step:
            out += [(1, i) for i in sample_indices(len(self.reason), step, self.batch_size, self.seed, "reason")]
        return out

    def recon_chunk_limit(self, step: int) -> int | None:
        """The most chunks a reconstruction window of this step may have (None: no limit)."""
        if not self.curriculum_steps or not len(self.recon) or step >= self.curriculum_steps:
            return None
        most = int(self.recon_chunks_sorted[-1])
        return 1 + int((most - 1) * step / self.curriculum_steps)

    def recon_rows(self, step: int) -> list[int]:
        """The step's reconstruction rows: any row, or under the curriculum rows of at most
        recon_chunk_limit(step) chunks (drawn from their own seeded permutations: still a pure
        function of (seed, step))."""
        limit = self.recon_chunk_limit(step)
        if limit is None:
            return sample_indices(len(self.recon), step, self.batch_size, self.seed, "recon")
        # rows of up to `limit` chunks (at least the shortest ones, if none is that short)
        eligible = max(int(np.searchsorted(self.recon_chunks_sorted, limit, side="right")),
                       int(np.searchsorted(self.recon_chunks_sorted, self.recon_chunks_sorted[0], side="right")))
        picks = sample_indices(eligible, step, self.batch_size, self.seed, f"recon<={limit}")
        return [int(self.recon_by_chunks[i]) for i in picks]

    def micro_batches(self, rows: list[tuple[int, int]]) -> list[list[int]]:
        """Positions into ``rows`` per micro-batch, each of similar length (padding to the
        longest row is what costs). Separate kinds: reconstruction micro-batches first, so their
        gradient can be kept from the decoder's LoRA and QA can skip the encoder's backward."""
        micro = math.ceil(len(rows) / self.grad_accum)
        length = lambda p: self._tok(rows[p][0]).length(rows[p][1])  # noqa: E731
        if self.separate_kinds:
            groups = [sorted((p for p, (kd, _) in enumerate(rows) if kd == kind), key=length) for kind in (0, 1)]
        else:
            groups = [sorted(range(len(rows)), key=length)]
        return [g[i:i + micro] for g in groups for i in range(0, len(g), micro)]

    def describe(self, step: int) -> str:
        """How ``step`` is split, for the run's first lines: the micro-batch size sets the memory a
        step needs, and batch_size / grad_accum do not say it alone (batch_size counts each
        objective, and separate kinds split on their own). Read off the split itself."""
        rows = self.step_rows(step)
        per_kind = [sum(kind == k for kind, _ in rows) for k in (0, 1)]
        most = max((len(part) for part in self.micro_batches(rows)), default=0)
        most = math.ceil(most / self.world)  # each process takes its share of a micro-batch
        return (f"a step: {per_kind[0]} reconstruction + {per_kind[1]} QA samples, micro-batches of up to {most} a process "
                f"(optim.grad_accum {self.grad_accum}: raise it if a step runs out of memory)")

    def _tok(self, kind: int) -> Tokenized:
        return self.recon if kind == 0 else self.reason

    def __getitem__(self, step: int) -> list[dict]:
        rows = self.step_rows(step)
        answers = [int(self._tok(kd).answer_tokens[r]) for kd, r in rows]
        totals = [sum(a for (kd, _), a in zip(rows, answers) if kd == kind) for kind in (0, 1)]
        weight = [self.recon_weight / max(1, totals[0]), 1.0 / max(1, totals[1])]
        out = []
        for part in self.micro_batches(rows):
            mine = part[self.rank::self.world]
            if not mine:
                out.append(None)  # fewer samples than processes in this micro-batch
                continue
            # one micro-batch may mix kinds: gather its rows into one Tokenized first
            tok = _join([self._tok(rows[p][0]).select([rows[p][1]]) for p in mine])
            batch = collate(tok, list(range(len(mine))), *self.pad)
            batch["weight"] = torch.tensor([weight[rows[p][0]] for p in mine], dtype=torch.float32)
            out.append(batch)
        return out


def _join(parts: Sequence[Tokenized]) -> Tokenized:
    """Tokenized sets one after another."""
    if len(parts) == 1:
        return parts[0]
    dec_lens = [np.diff(p.dec_offsets) for p in parts]
    enc_lens = [np.diff(p.enc_offsets) for p in parts]
    chunk_counts = [np.diff(p.sample_chunks) for p in parts]
    return Tokenized(np.concatenate([p.kind for p in parts]), _cat([p.dec_ids for p in parts], np.int32),
                     _offsets(np.concatenate(dec_lens)), np.concatenate([p.answer_tokens for p in parts]),
                     _offsets(np.concatenate(chunk_counts)), _cat([p.enc_ids for p in parts], np.int32),
                     _offsets(np.concatenate(enc_lens)))
