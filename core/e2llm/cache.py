"""A byte-bounded LRU cache of per-chunk tensors, keyed by a hash of the chunk's content.

A second question about the same document (or a document sharing chunks with an earlier
one) then skips the encoder. Keys include a namespace (soft prompts vs retrieval vectors),
and the engine clears the cache whenever its weights change.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


def content_key(namespace: str, text: str) -> str:
    return namespace + ":" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class TensorCache:
    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # engines are shared across threads by the plugins
        self.hits = self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            t = self._items.get(key)
            if t is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return t

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            self._items[key] = value.detach()
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def num_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
