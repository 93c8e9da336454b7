"""The user voice library and the voice consents in the shared Redis: every replica's data dir mirrors them.

    <prefix>:voices:meta           hash: voice id -> its voice.json (id, name, key, transcript, ...)
    <prefix>:voices:audio:<id>     the recording (the normalised 16 kHz WAV the replica stored)
    <prefix>:consents:meta         hash: consent id -> its JSON (id, name, language, created)
    <prefix>:consents:audio:<id>   the consent recording
    <prefix>:voices:version        a counter bumped by every change to either

A change is one MULTI/EXEC, so a replica reads a voice's metadata and recording as one. None of these
keys has an expiry: with `maxmemory-policy volatile-lru` Redis evicts cached audio, never voices.
Redis errors come out as `unavailable` (the voice layer does not import redis): a write then fails
with `unavailable`, a read goes on with the replica's last mirror."""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.exceptions import RedisError

from voxport.cluster.redis import SharedRedis
from voxport.errors import VoxportError, unavailable

log = logging.getLogger("voxport.voices")


def _away(exc: BaseException) -> VoxportError:
    return unavailable(
        f"The shared voice library (Redis) is unreachable: {type(exc).__name__}.", code="redis_unavailable"
    )


class SharedVoiceLibrary:
    """User voices and voice consents (`kind`: "voices" or "consents"), under one version counter."""

    def __init__(self, shared: SharedRedis):
        self.shared = shared
        self._version = shared.key("voices", "version")

    def _meta(self, kind: str) -> str:
        return self.shared.key(kind, "meta")

    def _audio(self, kind: str, item_id: str) -> str:
        return self.shared.key(kind, "audio", item_id)

    @property
    def available(self) -> bool:
        return self.shared.available

    def _failed(self, exc: BaseException) -> VoxportError:
        self.shared.failed("voices", exc)
        return _away(exc)

    async def version(self) -> int | None:
        """The library's version; None: Redis holds no library (new, or restarted without persistence)."""
        try:
            value = await self.shared.client.get(self._version)
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        return None if value is None else int(value)

    async def snapshot(self) -> tuple[int | None, dict[str, dict[str, dict[str, Any]]]]:
        """The version and every item's metadata by kind, read together."""
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                pipe.get(self._version).hgetall(self._meta("voices"))
                version, voices, consents = await pipe.hgetall(self._meta("consents")).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        items: dict[str, dict[str, dict[str, Any]]] = {}
        for kind, metas in (("voices", voices), ("consents", consents)):
            items[kind] = {}
            for item_id, raw in metas.items():
                try:
                    items[kind][item_id.decode()] = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    log.warning("skipping unreadable shared %s entry %r: %s", kind, item_id, exc)
        return (None if version is None else int(version)), items

    async def recording(self, kind: str, item_id: str) -> bytes | None:
        try:
            return await self.shared.client.get(self._audio(kind, item_id))
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def put(self, kind: str, meta: dict[str, Any], wav: bytes | None) -> None:
        """Add or change an item (`wav` None: its metadata only)."""
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._meta(kind), meta["id"], json.dumps(meta))
                if wav is not None:
                    pipe.set(self._audio(kind, meta["id"]), wav)
                await pipe.incr(self._version).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def remove(self, kind: str, item_id: str) -> None:
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._meta(kind), item_id).delete(self._audio(kind, item_id))
                await pipe.incr(self._version).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def seed(self, offered: dict[str, list[tuple[dict[str, Any], bytes]]]) -> None:
        """Offer this replica's items to a Redis that holds no library (a first start, or a restart
        without persistence): items another replica offered first are kept, not overwritten."""
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                for kind, items in offered.items():
                    for meta, wav in items:
                        pipe.hsetnx(self._meta(kind), meta["id"], json.dumps(meta))
                        pipe.set(self._audio(kind, meta["id"]), wav, nx=True)
                await pipe.incr(self._version).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        if any(offered.values()):
            log.info("offered %s to the shared library", {k: len(v) for k, v in offered.items()})
