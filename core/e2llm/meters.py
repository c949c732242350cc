"""Meters read by the benchmarks, the evaluation and training: peak memory, the matmul peak.

Their own module, below all three: ``e2llm.eval`` measures each system's peak memory and
``e2llm.bench`` (which runs eval's held-out items) too, so neither imports the other for it;
training's throughput meter compares against the same matmul peak as ``e2llm bench encode``.
"""
from __future__ import annotations

import threading
import time

import torch


class PeakMemory:
    """Peak memory growth during a block: RSS sampled by a thread on CPU, the allocator on CUDA."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base, self._max, self._stop = self._rss_mb(), 0.0, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._max = max(self._max, self._rss_mb())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(0.0, max(self._max, self._rss_mb()) - self._base)


def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """Measured matrix-product rate for (4 size x size) @ (size x size), best of a few."""
    a, b = torch.randn(4 * size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4 * size ** 3 * repeats / best / 1e9
