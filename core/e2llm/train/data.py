"""Training samples for the two objectives, and their deterministic order.

- reasoning: ``{context, prompt, answer}`` (the paper's JSONL), from files, a list of
  dicts, a Hugging Face ``datasets.Dataset``, or the built-in offline QA generator;
- reconstruction: a window of real text whose soft prompts must be turned back into it.

The sample of (objective, step, slot) is a pure function of the seed, so a resumed run
sees exactly the data an uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import InputError
from .config import SPLIT_SEED, VAL_FRACTION, DataConfig
from .corpus import DataError, iter_text_files, load_corpus, report_data_error, split_documents
from .synth import make_continuation_pairs, make_qa_samples, make_reconstruction_texts, read_jsonl, sample_problem


@dataclass(frozen=True)
class Sample:
    kind: str  # "reason" | "recon"
    context: str
    prompt: str
    answer: str
    raw_texts: tuple[str, ...] = ()  # raw passages given as ordinary tokens
    raw_top_n: int = 0  # hybrid: also the n chunks most similar to the prompt, raw (picked as at inference)
    qa_kind: str = ""  # single_fact / two_chunk / topic ... (built-in QA only)
    meta: dict = field(default_factory=dict, compare=False)


def reason_samples(records: Iterable[dict[str, Any]], source: str, on_error: str = "raise") -> list[Sample]:
    out = []
    for i, r in enumerate(records):
        problem = sample_problem(r)
        if problem:
            report_data_error(f"{source}: sample {i}: {problem}", on_error)
            continue
        out.append(Sample("reason", r["context"], r["prompt"], r["answer"], tuple(r.get("raw_texts", ())),
                          qa_kind=r.get("kind", ""), meta=r.get("meta", {})))
    return out


def load_reason(source, on_error: str = "raise") -> list[Sample]:
    """JSONL path, list of dicts, or a datasets.Dataset with context/prompt/answer columns."""
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        return reason_samples(read_jsonl(source, on_error), str(source), on_error)
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):  # datasets.Dataset
        missing = {"context", "prompt", "answer"} - set(source.column_names)
        if missing:
            raise DataError(f"dataset lacks columns {sorted(missing)}; it needs context, prompt, answer")
        return reason_samples(iter(source), "dataset", on_error)
    return reason_samples(source, "samples", on_error)


def recon_samples(texts: Sequence[str], prompt: str) -> list[Sample]:
    return [Sample("recon", t, prompt, t.strip()) for t in texts if t.strip()]


def _hybrid(samples: list[dict], fraction: float, raw_top_n: int, seed: int) -> list[Sample]:
    """A share of QA samples is read in hybrid mode (compressed + raw top chunks, retrieved as
    at inference), so the decoder learns to use raw passages next to soft prompts."""
    rng = random.Random(f"hybrid:{seed}")
    return [Sample("reason", s["context"], s["prompt"], s["answer"], (), raw_top_n if rng.random() < fraction else 0,
                   s["kind"], s["meta"]) for s in samples]


@dataclass
class TrainData:
    reason_train: list[Sample]
    reason_val: list[Sample]
    recon_train: list[Sample]
    recon_val: list[Sample]

    def describe(self) -> str:
        return (f"reasoning {len(self.reason_train)} train / {len(self.reason_val)} val; "
                f"reconstruction {len(self.recon_train)} train / {len(self.recon_val)} val")


def _window_sizes(words: tuple[int, int]) -> list[int]:
    lo, hi = words
    return sorted({round(lo + (hi - lo) * j / 4) for j in range(5)})  # a spread of window sizes


def _path_windows(cfg: DataConfig, docs, recon_prompt: str, continue_prompt: str, per_doc: float, seed: int) -> list[Sample]:
    """Reconstruction (and continuation) samples from documents: windows of each size in
    cfg.recon_words, in equal numbers."""
    sizes = _window_sizes(cfg.recon_words)
    total = max(1, round(per_doc * len(docs)))
    n_cont = round(total * cfg.continuation_fraction)
    out = []
    for i, words in enumerate(sizes):
        out += recon_samples(make_reconstruction_texts(docs, -(-(total - n_cont) // len(sizes)), seed + i, words), recon_prompt)
        if n_cont:
            pairs = make_continuation_pairs(docs, -(-n_cont // len(sizes)), seed + i, words)
            out += [Sample("recon", a, continue_prompt, b.strip()) for a, b in pairs]
    return out


def build_data(cfg: DataConfig, recon_prompt: str, continue_prompt: str = "Continue the document from where it stops.") -> TrainData:
    rt, rv, ct, cv = [], [], [], []
    for path in cfg.train_jsonl:
        rt += load_reason(path, cfg.on_error)
    for path in cfg.val_jsonl:
        rv += load_reason(path, cfg.on_error)
    if cfg.recon_paths:
        docs = list(iter_text_files(cfg.recon_paths, cfg.on_error))
        tr, va = split_documents(docs, SPLIT_SEED, VAL_FRACTION)
        # (the defaults, 4 windows of 40 words a document and no continuation, draw the same
        # windows as before these options existed)
        ct += _path_windows(cfg, tr, recon_prompt, continue_prompt, cfg.recon_windows_per_doc, 0) if tr else []
        # validation: reconstruction only (what the trainer's content figure measures), one size
        n_val = cfg.recon_val_windows or 2 * len(va)
        cv += recon_samples(make_reconstruction_texts(va, n_val, 1, 40), recon_prompt) if va else []
    b = cfg.builtin
    if b is not None:
        docs = list(iter_text_files(b.paths, cfg.on_error)) if b.paths else load_corpus()
        train_docs, val_docs = split_documents(docs, SPLIT_SEED, VAL_FRACTION)
        rt += _hybrid(make_qa_samples(train_docs, b.num_qa_train, b.seed, b.qa_context_tokens, b.qa_kinds),
                      b.hybrid_fraction, b.hybrid_top_n, b.seed)
        rv += _hybrid(make_qa_samples(val_docs, b.num_qa_val, b.seed + 1, b.qa_context_tokens, b.qa_kinds), 0.0, 0, b.seed)
        if b.num_long_qa_train:  # its own seed stream: adding long samples leaves the short ones as they were
            rt += _hybrid(make_qa_samples(train_docs, b.num_long_qa_train, b.seed + 1000, b.long_qa_context_tokens, b.qa_kinds),
                          b.hybrid_fraction, b.hybrid_top_n, b.seed + 1000)
        lo, hi = b.recon_words
        lengths = sorted({round(lo + (hi - lo) * j / 4) for j in range(5)})  # a spread of window sizes
        for i, words in enumerate(lengths):
            ct += recon_samples(make_reconstruction_texts(train_docs, b.num_recon_train // len(lengths), b.seed + i, words), recon_prompt)
            cv += recon_samples(make_reconstruction_texts(val_docs, -(-b.num_recon_val // len(lengths)), b.seed + 100 + i, words), recon_prompt)
    if not rt and not ct:
        raise InputError("no training data: give data.train_jsonl, data.recon_paths, or keep data.builtin")
    return TrainData(rt, rv, ct, cv)


def sample_indices(n: int, step: int, count: int, seed: int, stream: str) -> list[int]:
    """Indices of the `count` samples of `step`: epochs are seeded permutations of range(n),
    so any step's samples can be recomputed on resume without replaying the run."""
    if n == 0:
        return []
    out = []
    for pos in range(step * count, (step + 1) * count):
        epoch, i = divmod(pos, n)
        perm = _permutation(n, seed, stream, epoch)
        out.append(perm[i])
    return out


_PERMS: dict = {}


def _permutation(n: int, seed: int, stream: str, epoch: int) -> list[int]:
    key = (n, seed, stream, epoch)
    if key not in _PERMS:
        if len(_PERMS) > 8:
            _PERMS.clear()
        perm = list(range(n))
        random.Random(f"{seed}:{stream}:{epoch}").shuffle(perm)
        _PERMS[key] = perm
    return _PERMS[key]
