"""An optional on-disk store of chunk encodings, shared by every process that points at it.

One SQLite file (``encodings.sqlite`` in the folder given): a row per (weights fingerprint,
content key) holds a tensor as raw bytes with its dtype and shape, and a digest over all of
them. A row whose digest, dtype or shape does not check out is dropped and recomputed, never
trusted; rows made by other weights have another fingerprint and are never read. A file that
is not a readable database is moved aside and a new one started. Nothing is unpickled.

Size: the rows' data is kept under ``max_bytes`` (default 1 GiB, about 130 documents of 128K
tokens with the default models). Every read and write stamps its rows with a tick of a clock
kept in the file (shared by every process), and a write that takes the store past the limit
deletes the rows used least recently first.
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
DEFAULT_MAX_BYTES = 2**30


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

    def __init__(self, folder: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        from .errors import InputError

        if max_bytes < 1:
            raise InputError(f"the encoding store's size limit must be at least 1 byte, got {max_bytes}",
                             cli=f"--cache-max-mb must be > 0, got {max_bytes / 2**20:g}")
        self.max_bytes = max_bytes
        self.evicted = 0  # rows this process deleted to stay under max_bytes
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
                   "shape TEXT NOT NULL, data BLOB NOT NULL, digest TEXT NOT NULL, nbytes INTEGER NOT NULL DEFAULT 0, "
                   "used INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (fingerprint, key))")
        columns = {row[1] for row in db.execute("PRAGMA table_info(encodings)")}
        if "used" not in columns:  # a store written before the size limit: sizes from the data, all equally old
            db.execute("ALTER TABLE encodings ADD COLUMN nbytes INTEGER NOT NULL DEFAULT 0")
            db.execute("ALTER TABLE encodings ADD COLUMN used INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE encodings SET nbytes = length(data)")
        db.execute("CREATE INDEX IF NOT EXISTS encodings_used ON encodings (used)")
        db.execute("SELECT count(*) FROM encodings LIMIT 1").fetchone()  # a corrupt file fails here
        return db

    def _tick(self) -> int:
        """The next tick of the store's use clock (inside a write transaction: one per operation)."""
        return self._db.execute("SELECT coalesce(max(used), 0) + 1 FROM encodings").fetchone()[0]

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
            if out:
                self._touch(fp, list(out))
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

    def _touch(self, fp: str, keys: list[str]) -> None:
        """Rows just read become the most recently used (best effort: a busy store keeps old ticks)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            tick = self._tick()
            for i in range(0, len(keys), _BATCH):
                part = keys[i:i + _BATCH]
                self._db.execute(f"UPDATE encodings SET used = ? WHERE fingerprint = ? AND key IN ({','.join('?' * len(part))})",
                                 [tick, fp, *part])
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass

    def _evict(self) -> None:
        """Delete the least recently used rows until the data fits max_bytes (inside put's transaction)."""
        total = self._db.execute("SELECT coalesce(sum(nbytes), 0) FROM encodings").fetchone()[0]
        if total <= self.max_bytes:
            return
        doomed = []
        for rowid, nbytes in self._db.execute("SELECT rowid, nbytes FROM encodings ORDER BY used, rowid"):
            if total <= self.max_bytes:
                break
            doomed.append((rowid,))
            total -= nbytes
        self._db.executemany("DELETE FROM encodings WHERE rowid = ?", doomed)
        self.evicted += len(doomed)

    def put_many(self, fp: str, items: Sequence[tuple[str, torch.Tensor]]) -> None:
        rows = []
        for key, t in items:
            t = t.detach().cpu().contiguous()
            dtype, shape = str(t.dtype), json.dumps(list(t.shape))
            data = t.view(-1).view(torch.uint8).numpy().tobytes()
            rows.append((fp, key, dtype, shape, data, _digest(fp, key, dtype, shape, data), len(data)))
        with self._lock:
            try:  # one transaction: a crash leaves all rows or none
                self._db.execute("BEGIN IMMEDIATE")
                tick = self._tick()
                self._db.executemany("INSERT OR REPLACE INTO encodings (fingerprint, key, dtype, shape, data, digest, nbytes, "
                                     "used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(*r, tick) for r in rows])
                self._evict()
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

    def size_bytes(self) -> int:
        """Bytes of encoding data held (the quantity max_bytes bounds; the file adds SQLite's overhead)."""
        with self._lock:
            return self._db.execute("SELECT coalesce(sum(nbytes), 0) FROM encodings").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _numel(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
