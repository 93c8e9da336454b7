"""The user voice library in the shared Redis: every replica's voices/library mirrors it.

    <prefix>:voices:meta           hash: voice id -> its voice.json (id, name, key, transcript, ...)
    <prefix>:voices:audio:<id>     the recording (the normalised 16 kHz WAV the replica stored)
    <prefix>:voices:version        a counter bumped by every change

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
    def __init__(self, shared: SharedRedis):
        self.shared = shared
        self._meta = shared.key("voices", "meta")
        self._version = shared.key("voices", "version")

    def _audio(self, voice_id: str) -> str:
        return self.shared.key("voices", "audio", voice_id)

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

    async def snapshot(self) -> tuple[int | None, dict[str, dict[str, Any]]]:
        """The version and every voice's metadata, read together."""
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                version, metas = await pipe.get(self._version).hgetall(self._meta).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        voices = {}
        for voice_id, raw in metas.items():
            try:
                voices[voice_id.decode()] = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("skipping unreadable shared voice %r: %s", voice_id, exc)
        return (None if version is None else int(version)), voices

    async def recording(self, voice_id: str) -> bytes | None:
        try:
            return await self.shared.client.get(self._audio(voice_id))
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def put(self, meta: dict[str, Any], wav: bytes) -> None:
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._meta, meta["id"], json.dumps(meta)).set(self._audio(meta["id"]), wav)
                await pipe.incr(self._version).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def remove(self, voice_id: str) -> None:
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._meta, voice_id).delete(self._audio(voice_id))
                await pipe.incr(self._version).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def seed(self, voices: list[tuple[dict[str, Any], bytes]]) -> None:
        """Offer this replica's voices to a Redis that holds no library (a first start, or a restart
        without persistence): voices another replica offered first are kept, not overwritten."""
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                for meta, wav in voices:
                    pipe.hsetnx(self._meta, meta["id"], json.dumps(meta))
                    pipe.set(self._audio(meta["id"]), wav, nx=True)
                await pipe.incr(self._version).execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        if voices:
            log.info("offered %d library voice(s) to the shared library", len(voices))
