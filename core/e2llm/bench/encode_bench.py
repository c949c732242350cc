"""``e2llm bench encode``: the encoder stage's seconds and GFLOP/s against the measured matmul
peak (one pass vs two), and the ranking recall of both ranking modes on held-out items."""
from __future__ import annotations

import time

import torch

from .measure import _held_out_items, make_document


def encoder_flops(engine, texts) -> float:
    """FLOPs of one encoder pass over texts as batched (padded positions count: they are computed)."""
    from ..model import encoder_max_tokens, length_sorted_batches

    enc = engine.encoder.get_base_model() if hasattr(engine.encoder, "get_base_model") else engine.encoder
    cfg = enc.config
    linear = sum(m.in_features * m.out_features for m in enc.modules() if isinstance(m, torch.nn.Linear))
    bs, max_len = engine.config.encoder.chunks_per_batch, encoder_max_tokens(engine.config)  # as the engine encodes
    total = 0.0
    lengths = [len(x) for x in engine.encoder_tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]]
    for rows in length_sorted_batches(lengths, bs):  # as the engine batches them
        n, length = len(rows), max(lengths[i] for i in rows)
        total += 2 * linear * n * length + 4 * cfg.num_hidden_layers * n * length ** 2 * cfg.hidden_size
    return total


def encoder_throughput(engine, document_tokens: int = 32768, batch_sizes=(16, 64, 256)) -> list[dict]:
    """Seconds and GFLOP/s of the encoder stage (all chunks of one document), both ranking modes,
    the encoder's inference precision (a bf16 copy vs bf16 autocast over float32 weights; one
    row where bf16 does not pay) and several batch sizes, interleaved, against the measured
    matmul peaks."""
    doc = make_document(engine.decoder_tokenizer, document_tokens)
    texts = [c.text for c in engine.chunk(doc)]
    flops = {}
    rows = []
    original = (engine.config.encoder.chunks_per_batch, engine.ranking_pass, engine.encoder_copy)
    precisions = {"bf16 copy": True, "bf16 autocast": False} if engine._encoder_copy_pays() else {"own dtype": False}
    try:
        for copy_ in precisions.values():  # warm-up: builds the bf16 copies (LoRA on and off) outside the timings
            engine.encoder_copy, engine.ranking_pass = copy_, "base"
            engine.cache.clear()
            engine._encode_pass(texts[:4])
            engine.ranking_vectors(texts[:4])
        for bs in batch_sizes:
            engine.config.encoder.chunks_per_batch = bs
            flops[bs] = encoder_flops(engine, texts)
            for precision, copy_ in precisions.items():
                for mode in ("base", "shared"):
                    engine.ranking_pass, engine.encoder_copy = mode, copy_
                    engine.cache.clear()
                    t = time.perf_counter()
                    engine._encode_pass(texts)  # soft prompts (+ shared ranking vectors)
                    engine.ranking_vectors(texts)  # base: the second pass
                    seconds = time.perf_counter() - t
                    passes = 2 if mode == "base" else 1
                    rows.append(dict(precision=precision, ranking=mode, chunks_per_batch=bs, chunks=len(texts),
                                     seconds=seconds, gflops_per_s=passes * flops[bs] / seconds / 1e9))
    finally:
        engine.config.encoder.chunks_per_batch, engine.ranking_pass, engine.encoder_copy = original
        engine.cache.clear()
    return rows


def answer_chunks(engine, item) -> tuple[list, set[int]]:
    """An item's chunks, and the indices of those that hold one of its answers (empty: none does)."""
    from ..eval.metrics import normalize_answer

    chunks = engine.chunk(item.context)
    answers = [normalize_answer(a) for a in item.answers]
    return chunks, {i for i, c in enumerate(chunks) if any(a and a in normalize_answer(c.text) for a in answers)}


def ranking_recall(engine, length: int = 8192, items: int = 30, top: int | None = None) -> dict[str, tuple[int, int]]:
    """Held-out synthetic items whose answer sits in some chunk: how often a chunk holding it is
    among the ``top`` ranked (default raw_top_n), per ranking mode. (hits, items)."""
    top = top or engine.config.raw_top_n or 3
    pool = _held_out_items(items, length, tasks=("single_fact", "multi_fact", "two_chunk"))
    out, original = {}, engine.ranking_pass
    try:
        for mode in ("base", "shared"):
            engine.ranking_pass, hits, n = mode, 0, 0
            engine.cache.clear()
            for item in pool:
                chunks, relevant = answer_chunks(engine, item)
                if not relevant:
                    continue
                n += 1
                hits += bool(relevant & set(engine.rank_chunks(item.question, chunks)[:top]))
            out[mode] = (hits, n)
    finally:
        engine.ranking_pass = original
        engine.cache.clear()
    return out
