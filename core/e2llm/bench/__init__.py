"""``e2llm bench``: one module a benchmark, and what they share.

- :mod:`.latency_bench` (``e2llm bench latency``): E2LLM vs full context and RAG, per stage.
- :mod:`.decode_bench` (``e2llm bench decode``): ms a decoded token per decode path; agreement.
- :mod:`.encode_bench` (``e2llm bench encode``): encoder GFLOP/s; ranking recall.
- :mod:`.measure`: the question, documents, clocks and held-out items they share.
- :mod:`.cli`: the ``e2llm bench`` arguments.

The names below stay importable from ``e2llm.bench`` as before the split; each loads its module
(and torch) on first use, so ``e2llm bench --help`` stays quick.
"""
from __future__ import annotations

import importlib

_NAMES = {
    "measure": ("QUESTION", "make_document", "_StepClock", "_timed", "_decoder_tokens", "_held_out_items"),
    "latency_bench": ("Row", "run_e2llm", "run_full", "run_rag", "latency", "format_table", "plot", "STAGES"),
    "decode_bench": ("decode_speed", "answer_decode_speed", "decode_agreement"),
    "encode_bench": ("encoder_flops", "encoder_throughput", "ranking_recall"),
    "cli": ("add_parser",),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}
_WHERE["add_bench_parser"] = "cli"  # its name before the split
_WHERE["PeakMemory"] = _WHERE["matmul_peak_gflops"] = "..meters"  # e2llm.meters: below bench, eval and train

__all__ = sorted(n for n in _WHERE if not n.startswith("_"))


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'e2llm.bench' has no attribute {name!r}")
    target = "add_parser" if name == "add_bench_parser" else name
    return getattr(importlib.import_module(module if module.startswith("..") else f".{module}", __name__), target)
