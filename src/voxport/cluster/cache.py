"""The audio cache in the shared Redis (`--redis-url`): what one replica generates, every replica serves.

An entry is one Redis string, `<prefix>:cache:<key>` (the key is the embedded cache's MD5 key), written
with the TTL (`cache_ttl_minutes`) as its Redis expiry:

    magic (8 bytes) | header length (4, little-endian) | header JSON | payload

The header holds the payload's length and MD5 and what the response needs; a read that finds anything
inconsistent deletes the entry and reports a miss, so a truncated or corrupt value is never served. The
size cap is Redis' own (`maxmemory` with `maxmemory-policy volatile-lru`, docs/scaling.md): entries carry
an expiry, the voice library does not, so only cached audio is evicted.

Single flight holds across replicas: the first replica to ask takes a lock (`SET NX PX`, a lease it
renews while it generates); the others poll for the entry and take over if the lock goes away without
one (the holder died or failed). Within one replica, identical requests coalesce first, as in the
embedded cache. Redis away: a lookup is a miss, a store is skipped, the lock is not taken — requests are
served without the shared cache, never failed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from voxport.cache import CachedAudio, CacheStats, entry_header, read_entry
from voxport.cluster.redis import SharedRedis
from voxport.singleflight import Produce, SharedResult, coalesce

log = logging.getLogger("voxport.cache")

_HASH_IN_THREAD = 256 * 1024  # payloads above this are hashed in a worker thread
_LEASE_MS = 10_000  # a holder that dies stops blocking the others after this long
_POLL_S = 0.05  # how often a waiting replica looks for the holder's result
_UNLINK_BATCH = 256  # keys removed per command by clear()

# Extend / release the lock only while it is still ours (a lease that ran out may be someone else's now).
_IF_OURS = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call({}) end return 0"
_RENEW = _IF_OURS.format("'pexpire', KEYS[1], ARGV[2]")
_RELEASE = _IF_OURS.format("'del', KEYS[1]")


def pack(payload: bytes, meta: dict[str, Any]) -> bytes:
    """One Redis value: the disk cache's entry format (voxport.cache), header and payload together."""
    return entry_header(payload, meta) + payload


class RedisAudioCache:
    """`voxport.cache.AudioStore` (the disk cache's interface) over the shared Redis."""

    def __init__(self, shared: SharedRedis, ttl_seconds: float, wait_s: float = 300.0):
        self.shared = shared
        self.ttl_seconds = ttl_seconds
        self.wait_s = wait_s  # the longest a replica waits for another's result before it generates itself
        self.stats = CacheStats()
        self.entries = 0  # counted by the sweeper (a SCAN), not per request
        self.bytes = 0
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def _key(self, key: str) -> str:
        return self.shared.key("cache", key)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.shared.failed(op, exc)
        log.warning("redis %s failed (%s): going on without the shared cache", op, type(exc).__name__)

    # -- the AudioCache interface -------------------------------------------------------------------

    async def get(self, key: str) -> CachedAudio | None:
        data = None
        if self.shared.available:  # away: a miss at once, not a timeout per request
            try:
                data = await self.shared.client.get(self._key(key))
            except (RedisError, OSError) as exc:
                self._failed("get", exc)
        found = await self._check(key, data) if data is not None else None
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found

    async def _check(self, key: str, data: bytes) -> CachedAudio | None:
        try:
            if len(data) > _HASH_IN_THREAD:
                return await asyncio.to_thread(read_entry, data)
            return read_entry(data)
        except ValueError as exc:
            log.warning("cache entry %s is corrupt (%s): discarded", key, exc)
            self.stats.corrupt += 1
            with contextlib.suppress(RedisError, OSError):
                await self.shared.client.delete(self._key(key))
            return None

    async def put(self, key: str, payload: bytes, meta: dict[str, Any]) -> None:
        if not self.shared.available:
            return
        big = len(payload) > _HASH_IN_THREAD
        data = await asyncio.to_thread(pack, payload, meta) if big else pack(payload, meta)
        try:
            await self.shared.client.set(self._key(key), data, px=max(1, int(self.ttl_seconds * 1000)))
        except (RedisError, OSError) as exc:  # the cache is lost, never the request
            self._failed("set", exc)
            return
        self.stats.writes += 1

    async def single_flight(self, key: str, produce: Produce) -> tuple[Any, bool]:
        """Run `produce` once per key at a time across every replica (voxport.singleflight). Returns
        (result, True if this caller produced it); a result made elsewhere comes back as a `SharedResult`."""
        return await coalesce(self._inflight, key, lambda: self._across(key, produce))

    async def _across(self, key: str, produce: Produce) -> tuple[Any, bool]:
        lock, token = self.shared.key("lock", key), secrets.token_hex(8)
        deadline = time.monotonic() + self.wait_s
        while self.shared.available:  # away: no coordination, this replica generates
            try:
                held = await self.shared.client.set(lock, token, nx=True, px=_LEASE_MS)
                # Looked up again even when the lock is ours: its last holder may have just stored it.
                data = await self.shared.client.get(self._key(key))
            except (RedisError, OSError) as exc:
                self._failed("lock", exc)
                break
            found = await self._check(key, data) if data is not None else None
            if held and found is None:
                return await self._hold(lock, token, produce), True
            if held:
                await self._release(lock, token)
            if found is not None:
                return SharedResult(found.payload, found.meta), False
            if time.monotonic() > deadline:
                log.warning("gave up waiting for another replica's result after %.0fs", self.wait_s)
                break
            await asyncio.sleep(_POLL_S)
        return await produce(), True

    async def _hold(self, lock: str, token: str, produce: Produce) -> Any:
        """Produce while holding the lock, renewing its lease; the result is stored (by `produce`)
        before the lock goes, so the others find it when they look."""
        renew = asyncio.create_task(self._renew(lock, token))
        try:
            return await produce()
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            await self._release(lock, token)

    async def _release(self, lock: str, token: str) -> None:
        try:
            await self.shared.client.eval(_RELEASE, 1, lock, token)
        except (RedisError, OSError) as exc:  # the lease runs out by itself
            self._failed("unlock", exc)

    async def _renew(self, lock: str, token: str) -> None:
        while True:
            await asyncio.sleep(_LEASE_MS / 3000)
            try:
                await self.shared.client.eval(_RENEW, 1, lock, token, _LEASE_MS)
            except (RedisError, OSError) as exc:
                self._failed("renew", exc)

    def clear(self) -> int:
        """Remove every cached entry (called in a worker thread, as the embedded cache's is: a plain
        blocking client of its own, so as not to share the async pool across threads)."""
        client = redis.Redis.from_url(self.shared.url, socket_timeout=5, socket_connect_timeout=2)
        removed = 0
        try:
            batch: list[bytes] = []
            for name in client.scan_iter(match=self._key("*"), count=1000):
                batch.append(name)
                if len(batch) >= _UNLINK_BATCH:
                    removed += client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += client.unlink(*batch)
        except (RedisError, OSError) as exc:
            self._failed("clear", exc)
        finally:
            client.close()
        return removed

    def load_index(self) -> None:
        """Nothing to load: the entries live in Redis."""

    async def run_sweeper(self, interval: float) -> None:
        """Expiry and eviction are Redis' own; this only refreshes the entry count and byte figures
        that /health and /metrics show (a SCAN of the cache's keys, and Redis' used memory)."""
        while True:
            with contextlib.suppress(RedisError, OSError):
                entries = 0
                async for _ in self.shared.client.scan_iter(match=self._key("*"), count=1000):
                    entries += 1
                memory = await self.shared.client.info("memory")
                self.entries, self.bytes = entries, int(memory.get("used_memory", 0))
            await asyncio.sleep(interval)
