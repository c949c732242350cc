"""An optional on-disk store of chunk encodings, shared by every process that points at it.

One SQLite file (``encodings.sqlite`` in the folder given): a row per (weights fingerprint,
content key) holds a tensor as raw bytes with its dtype and shape, and a digest over all of
them. A row whose digest, dtype or shape does not check out is dropped and recomputed, never
trusted; rows made by other weights have another fingerprint and are never read. A file that
is not a readable database is moved aside and a new one started. Nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.int64)}  # int64: chunk spans
_BATCH = 500  # keys per SELECT (SQLite's variable limit is 32766; small batches keep queries quick)


def fingerprint(settings: dict, modules: dict[str, nn.Module]) -> str:
    """A digest of the settings and weights an encoding depends on. Trainable tensors (LoRA,
    adapter) are hashed whole; frozen backbone tensors by shape and a strided sample of their
    values (hashing 90 MB of encoder weights in every process would cost more than reading)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            t = p.detach().cpu().contiguous().view(-1)
            if not p.requires_grad and "lora_" not in name and t.numel() > 4096:
                t = t[:: max(1, t.numel() // 4096)].contiguous()
            h.update(f"{prefix}.{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _digest(fp: str, key: str, dtype: str, shape: str, data: bytes) -> str:
    return hashlib.blake2b("\0".join((fp, key, dtype, shape)).encode() + b"\0" + data, digest_size=16).hexdigest()


class EncodingStore:
    FILE = "encodings.sqlite"

    def __init__(self, folder: str | os.PathLike):
        from .errors import InputError

        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"the encoding store {folder} is a file; pass a folder (it is created if missing)")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the encoding store folder {folder} ({e.strerror}); pass a writable folder") from None
        self.path = self.folder / self.FILE
        self._lock = threading.Lock()
        self.hits = self.misses = self.rejected = 0
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
        except sqlite3.DatabaseError as e:  # not a database (truncated, overwritten): never trusted
            aside = self.path.with_name(f"{self.FILE}.corrupt-{int(time.time())}")
            warnings.warn(f"the encoding store {self.path} is unreadable ({e}); moved to {aside.name}, starting a new one",
                          stacklevel=3)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            db = self._connect()
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # readers in other processes never block on a writer
        db.execute("CREATE TABLE IF NOT EXISTS encodings (fingerprint TEXT NOT NULL, key TEXT NOT NULL, dtype TEXT NOT NULL, "
                   "shape TEXT NOT NULL, data BLOB NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (fingerprint, key))")
        db.execute("SELECT count(*) FROM encodings LIMIT 1").fetchone()  # a corrupt file fails here
        return db

    def get_many(self, fp: str, keys: Sequence[str]) -> list[torch.Tensor | None]:
        out: dict[str, torch.Tensor] = {}
        bad: list[str] = []
        with self._lock:
            for i in range(0, len(keys), _BATCH):
                part = list(keys[i:i + _BATCH])
                try:
                    rows = self._db.execute(
                        f"SELECT key, dtype, shape, data, digest FROM encodings WHERE fingerprint = ? AND key IN "
                        f"({','.join('?' * len(part))})", [fp, *part]).fetchall()
                except sqlite3.DatabaseError as e:
                    warnings.warn(f"the encoding store {self.path} could not be read ({e}); encoding anew", stacklevel=3)
                    return [None] * len(keys)
                for key, dtype, shape, data, digest in rows:
                    t = self._decode(fp, key, dtype, shape, data, digest)
                    if t is None:
                        bad.append(key)
                    else:
                        out[key] = t
            if bad:
                self.rejected += len(bad)
                self._delete(fp, bad)
        found = [out.get(k) for k in keys]
        self.hits += sum(t is not None for t in found)
        self.misses += sum(t is None for t in found)
        return found

    @staticmethod
    def _decode(fp, key, dtype, shape, data, digest) -> torch.Tensor | None:
        if not isinstance(data, bytes) or _digest(fp, key, str(dtype), str(shape), data) != digest or dtype not in _DTYPES:
            return None
        try:
            dims = [int(d) for d in json.loads(shape)]
        except (ValueError, TypeError):
            return None
        t_dtype = _DTYPES[dtype]
        if len(data) != _numel(dims) * torch.empty(0, dtype=t_dtype).element_size():
            return None
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(t_dtype).view(dims)
        return t if torch.isfinite(t).all() else None

    def _delete(self, fp: str, keys: list[str]) -> None:
        try:
            self._db.executemany("DELETE FROM encodings WHERE fingerprint = ? AND key = ?", [(fp, k) for k in keys])
        except sqlite3.DatabaseError:
            pass

    def put_many(self, fp: str, items: Sequence[tuple[str, torch.Tensor]]) -> None:
        rows = []
        for key, t in items:
            t = t.detach().cpu().contiguous()
            dtype, shape = str(t.dtype), json.dumps(list(t.shape))
            data = t.view(-1).view(torch.uint8).numpy().tobytes()
            rows.append((fp, key, dtype, shape, data, _digest(fp, key, dtype, shape, data)))
        with self._lock:
            try:  # one transaction: a crash leaves all rows or none
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO encodings VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.DatabaseError:
                    pass
                warnings.warn(f"could not write to the encoding store {self.path} ({e}); answers are unaffected", stacklevel=3)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM encodings").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _numel(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
