"""The disk audio cache: MD5-keyed, atomic, self-checking, TTL- and size-bounded, single-flight.

An entry is one file, `<dir>/<key[:2]>/<key>.audio`:

    magic (8 bytes) | header length (4, little-endian) | header JSON | payload

The header holds the payload's length and MD5 and what the response needs (content type, rate,
duration, usage). A read that finds anything inconsistent deletes the file and reports a miss, so a
truncated or corrupt entry is never served. Writes go to a temp file in the cache directory and are
renamed into place, so readers see a whole entry or none. File I/O runs in worker threads.

Hot small entries (each up to `MEMORY_ENTRY_BYTES`, `memory_bytes` in all) are also kept in memory, in
LRU order: a hit on one costs no thread and no read. An entry enters memory only as it was written, or
after a read from disk passed the check above, so memory never holds a corrupt entry; it leaves memory
when it leaves the index (TTL, size cap, clear). Hits from memory mark the entry used in the index (the
size cap's LRU order); the file's atime (the order after a restart) is brought up to date by the sweep.

The module is longer than 300 lines because the memory tier shares the index's lock and bookkeeping
(every removal drops both under one lock): split in two, each half would reach into the other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from voxport.faultlog import OncePerCause
from voxport.files import TEMP_PREFIX, atomic_write, clear_the_way, discard, lstat_is
from voxport.singleflight import Across, Produce, coalesce
from voxport.skipped import SkippedFiles

log = logging.getLogger("voxport.cache")

MAGIC = b"VXPCACH1"
_SUFFIX = ".audio"
MEMORY_ENTRY_BYTES = 1 << 20  # larger entries are read from disk for each hit


def cache_key(fields: dict[str, Any]) -> str:
    """MD5 of a canonical serialisation (sorted keys, no whitespace) of everything that changes the bytes."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.md5(canonical.encode("utf-8")).hexdigest()


def checkpoint_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """A cheap fingerprint of a checkpoint: config and tokenizer files whole, and for each weight file
    its size and four 1 MiB samples (its start, which holds the safetensors header, and three more).
    Different weights of the same shape differ in every sample, so this changes with the weights without
    reading gigabytes at start-up."""
    digest = hashlib.md5()
    root = Path(model_dir)
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            if path.suffix in (".json", ".txt", ".model"):
                digest.update(handle.read())
                continue
            for fraction in (0.0, 0.33, 0.66, 0.99):
                handle.seek(int(size * fraction))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


@dataclass
class CachedAudio:
    payload: bytes
    meta: dict[str, Any]


def entry_header(payload: bytes, meta: dict[str, Any]) -> bytes:
    """An entry's bytes before its payload: magic, header length, and the header (with the payload's
    length and MD5). The disk cache and the shared Redis one store the same entries."""
    header = {**meta, "length": len(payload), "md5": hashlib.md5(payload).hexdigest()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(encoded)) + encoded


def read_entry(data: bytes) -> CachedAudio:
    """The entry in `data`, or ValueError when it is not whole and consistent."""
    try:
        if data[:8] != MAGIC:
            raise ValueError("bad magic")
        (header_len,) = struct.unpack("<I", data[8:12])
        meta = json.loads(data[12 : 12 + header_len])
        payload = data[12 + header_len :]
        if len(payload) != meta["length"] or hashlib.md5(payload).hexdigest() != meta["md5"]:
            raise ValueError("payload does not match its header")
    except (KeyError, TypeError, struct.error, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)[:200]) from None
    return CachedAudio(payload, meta)


@dataclass
class _Entry:
    size: int
    created: float
    used: float


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    evictions: int = 0
    corrupt: int = 0


@dataclass
class AudioCache:
    directory: Path
    ttl_seconds: float
    max_bytes: int
    on_evict: Callable[[int], None] | None = None  # told how many entries each sweep evicted
    stats: CacheStats = field(default_factory=CacheStats)
    memory_bytes: int = 0  # payload bytes of hot entries also kept in memory; 0: none
    skipped: SkippedFiles = field(default_factory=SkippedFiles)  # what start-up found that is no entry
    across: Across | None = None  # asked by this process's leader: voxport.topology.flight (--workers)

    def __post_init__(self) -> None:
        self._index: dict[str, _Entry] = {}
        self._bytes = 0  # the index's total size, kept as entries come and go
        self._lock = threading.Lock()  # the index and memory are touched from worker threads
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._hot: OrderedDict[str, CachedAudio] = OrderedDict()
        self._hot_bytes = 0
        self._touched: set[str] = set()  # used from memory since the last sweep: their atime is behind

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    @property
    def entries(self) -> int:
        return len(self._index)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def memory_entries(self) -> int:
        return len(self._hot)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{_SUFFIX}"

    # -- start-up ------------------------------------------------------------------------------

    def load_index(self) -> None:
        """Scan the directory (in a worker thread): index entries, remove temp files left by a crash."""
        self.directory.mkdir(parents=True, exist_ok=True)
        index: dict[str, _Entry] = {}
        # Only real subdirectories and regular files: a symlink is never followed out of the data dir.
        for path in (p for d in self.directory.iterdir() if lstat_is(d, stat.S_ISDIR) for p in d.iterdir()):
            if path.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(OSError):
                    path.unlink()
            elif path.suffix == _SUFFIX:
                if not lstat_is(path, stat.S_ISREG):  # replaced by the next write of its key
                    self.skipped.add("cache", path.name, "not a regular file")
                    continue
                info = path.lstat()
                index[path.stem] = _Entry(info.st_size, info.st_mtime, info.st_atime)
        with self._lock:
            self._index = index
            self._bytes = sum(e.size for e in index.values())
            self._hot.clear()
            self._hot_bytes = 0

    # -- memory (the event loop and worker threads, under the lock) ------------------------------

    def _from_memory(self, key: str) -> CachedAudio | None:
        """A hot entry, without I/O (on the event loop); None sends the caller to disk."""
        now = time.time()
        with self._lock:
            hot = self._hot.get(key)
            if hot is None:
                return None
            entry = self._index.get(key)
            if entry is None or now - entry.created > self.ttl_seconds:
                return None  # the read from disk removes what expired
            self._hot.move_to_end(key)
            entry.used = now
            self._touched.add(key)
        return hot

    def _remember(self, key: str, found: CachedAudio) -> None:
        """Keep a checked entry in memory if it is small, evicting the least recently used (lock held)."""
        size = len(found.payload)
        if size > min(MEMORY_ENTRY_BYTES, self.memory_bytes) or key in self._hot:
            return
        self._hot[key] = found
        self._hot_bytes += size
        while self._hot_bytes > self.memory_bytes:
            _, old = self._hot.popitem(last=False)
            self._hot_bytes -= len(old.payload)

    # -- reading and writing (worker threads) ---------------------------------------------------

    def _read(self, key: str) -> CachedAudio | None:
        path = self._path(key)
        with self._lock:
            entry = self._index.get(key)
        if entry is None:
            entry = self._adopt(key, path)
            if entry is None:
                return None
        if time.time() - entry.created > self.ttl_seconds:
            self._remove(key)
            return None
        try:
            found = read_entry(path.read_bytes())
        except FileNotFoundError:
            self._forget(key)
            return None
        except (ValueError, OSError) as exc:  # OSError: a directory (or worse) where the entry was
            log.warning("cache entry %s is corrupt (%s): discarded", key, exc)
            self.stats.corrupt += 1
            self._remove(key)
            return None
        now = time.time()
        with self._lock:
            entry.used = now
            if self._index.get(key) is entry:  # not removed meanwhile
                self._remember(key, found)
        with contextlib.suppress(OSError):
            os.utime(path, (now, entry.created))  # atime = recency, mtime = creation
        return found

    def _adopt(self, key: str, path: Path) -> _Entry | None:
        """An entry another process on this directory wrote (`--workers`: every worker has its own
        index), indexed here from the file; None when there is none."""
        try:
            stat = path.stat()
        except OSError:
            return None
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                entry = self._index[key] = _Entry(stat.st_size, stat.st_mtime, stat.st_atime)
                self._bytes += stat.st_size
        return entry

    def _write(self, key: str, payload: bytes, meta: dict[str, Any]) -> None:
        path = self._path(key)
        clear_the_way(path)
        atomic_write(path, entry_header(payload, meta), payload)
        now = time.time()
        size = path.stat().st_size
        with self._lock:
            self._drop(key)
            self._index[key] = _Entry(size, now, now)
            self._bytes += size
            self._remember(key, CachedAudio(payload, meta))
        self.stats.writes += 1
        if self.bytes > self.max_bytes:
            self.sweep()

    def _drop(self, key: str) -> None:
        """Out of the index and memory (lock held)."""
        entry = self._index.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
        hot = self._hot.pop(key, None)
        if hot is not None:
            self._hot_bytes -= len(hot.payload)
        self._touched.discard(key)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _remove(self, key: str) -> None:
        self._forget(key)
        path = self._path(key)
        if lstat_is(path.parent, stat.S_ISDIR):  # never through a symlinked subdirectory
            discard(path)

    def sweep(self) -> int:
        """Drop expired entries, then the least recently used until under the size cap; bring the atime
        of the entries used from memory up to date."""
        now = time.time()
        with self._lock:
            touched = [(k, self._index[k]) for k in self._touched if k in self._index]
            self._touched.clear()
        for key, entry in touched:
            with contextlib.suppress(OSError):
                os.utime(self._path(key), (entry.used, entry.created))
        with self._lock:
            expired = [k for k, e in self._index.items() if now - e.created > self.ttl_seconds]
            by_recency = sorted((e.used, k) for k, e in self._index.items() if k not in expired)
            total = sum(e.size for k, e in self._index.items() if k not in expired)
        victims = list(expired)
        for _, key in by_recency:
            if total <= self.max_bytes:
                break
            with self._lock:
                total -= self._index[key].size if key in self._index else 0
            victims.append(key)
        for key in victims:
            self._remove(key)
        if victims:
            self.stats.evictions += len(victims)
            if self.on_evict:
                self.on_evict(len(victims))
        return len(victims)

    def clear(self) -> int:
        with self._lock:
            keys = list(self._index)
        for key in keys:
            self._remove(key)
        return len(keys)

    # -- async API --------------------------------------------------------------------------------

    async def peek(self, key: str) -> CachedAudio | None:
        """An entry, counted as neither hit nor miss (single flight's second look)."""
        found = self._from_memory(key)
        return found if found is not None else await asyncio.to_thread(self._read, key)

    async def get(self, key: str) -> CachedAudio | None:
        found = await self.peek(key)
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found

    async def put(self, key: str, payload: bytes, meta: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._write, key, payload, meta)
        except OSError as exc:  # a full disk costs the cache, never the request
            log.warning("cache write failed: %s", exc)

    async def single_flight(self, key: str, produce: Produce) -> tuple[Any, bool]:
        """Run `produce` once per key at a time (voxport.singleflight): in this process, and with
        `across` (--workers) in every worker. Returns (result, True if this caller produced it)."""
        across = self.across or _alone
        return await coalesce(self._inflight, key, lambda: across(key, produce))

    async def run_sweeper(self, interval: float) -> None:
        errors = OncePerCause(log)
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # the sweeper outlives it and tries again next time
                errors.report("cache sweep", exc)


async def _alone(_key: str, produce: Produce) -> tuple[Any, bool]:
    return await produce(), True


class AudioStore(Protocol):
    """What the speech service, the ops routes and the app use of an audio cache: `AudioCache` on disk,
    or `voxport.cluster.cache.RedisAudioCache` shared by replicas (--redis-url)."""

    stats: CacheStats

    @property
    def enabled(self) -> bool: ...
    @property
    def entries(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    async def get(self, key: str) -> CachedAudio | None: ...
    async def put(self, key: str, payload: bytes, meta: dict[str, Any]) -> None: ...
    async def single_flight(self, key: str, produce: Produce) -> tuple[Any, bool]: ...
    def clear(self) -> int: ...
    def load_index(self) -> None: ...
    async def run_sweeper(self, interval: float) -> None: ...
