"""The user library and the voice consents kept in step with shared ones (`--redis-url`; the shared side is
`voxport.cluster.voices.SharedVoiceLibrary`, passed in by the composition root, so nothing here
imports Redis).

The shared library is the truth; each replica keeps a mirror of it in its own data dir (the recordings
the engine encodes from, and what the replica serves while Redis is away). Before a request uses the
library, `refresh` compares the shared version with the mirror's (one Redis GET) and, when it moved,
fetches the voices added or changed and drops those removed: a voice created or deleted on one replica
is seen by the next request on any other. Encoded prompts are per replica, made on first use from the
mirrored recording and released when their voice goes.

Writes go to the shared library first and fail (`redis_unavailable`) while it is away, so replicas
never disagree about which voices exist. A Redis that holds no library (first start, or a restart
without persistence) is offered every replica's mirrored voices, so the library outlives such a
restart."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from voxport.errors import VoxportError
from voxport.voices import library
from voxport.voices.catalog import Voice
from voxport.voices.consents import Consent

if TYPE_CHECKING:
    from voxport.voices.registry import VoiceRegistry

log = logging.getLogger("voxport.voices")


class SharedLibrary(Protocol):
    """Items by kind ("voices", "consents"): metadata and a recording each, under one version."""

    available: bool

    async def version(self) -> int | None: ...
    async def snapshot(self) -> tuple[int | None, dict[str, dict[str, dict[str, Any]]]]: ...
    async def recording(self, kind: str, item_id: str) -> bytes | None: ...
    async def put(self, kind: str, meta: dict[str, Any], wav: bytes | None) -> None: ...
    async def remove(self, kind: str, item_id: str) -> None: ...
    async def seed(self, offered: dict[str, list[tuple[dict[str, Any], bytes]]]) -> None: ...


def _voice(folder: Path, meta: dict[str, Any]) -> Voice:
    return Voice(meta["id"], "uploaded", "user", meta["key"], name=meta["name"],
                 transcript=meta.get("transcript"), audio=folder / "audio.wav", duration=meta["duration"],
                 created=meta["created"], consent=meta.get("consent"),
                 owner=meta.get("owner") or "")  # fmt: skip


def _store(root: Path, meta: dict[str, Any], wav: bytes) -> Voice:
    """Mirror one shared voice into the local library (staged, then renamed into place)."""
    folder = root / meta["id"]
    library.commit(library.stage_bytes(root, wav, meta), folder)
    return _voice(folder, meta)


def _local(voices: list[Voice], root: Path) -> list[tuple[dict[str, Any], bytes]]:
    found = []
    for voice in voices:
        folder = root / voice.id
        try:
            meta = json.loads((folder / "voice.json").read_text("utf-8"))
            found.append((meta, (folder / "audio.wav").read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("cannot offer library voice %s: %s", voice.id, exc)
    return found


class LibraryMirror:
    def __init__(self, shared: SharedLibrary, root: Path):
        self.shared = shared
        self.root = root
        self.version: int | None = None
        self.synced = False
        # Held while the mirror changes, so that a sync never sees a voice this replica is adding half-way.
        self.lock = asyncio.Lock()

    async def refresh(self, registry: VoiceRegistry) -> None:
        """Bring `registry.user` up to the shared library; with Redis away, keep the last mirror."""
        if not self.shared.available:
            return
        try:
            if self.synced and await self.shared.version() == self.version:
                return
            async with self.lock:
                await self._sync(registry)
        except VoxportError as exc:
            if exc.kind != "unavailable":
                raise
            log.warning("voice library not refreshed: %s", exc.message)

    async def _sync(self, registry: VoiceRegistry) -> None:
        version, items = await self.shared.snapshot()
        if version is None:  # Redis holds no library: offer ours, then read what all offered
            voices = await asyncio.to_thread(_local, list(registry.user.values()), self.root)
            await self.shared.seed({"voices": voices, "consents": await registry.consents.offer()})
            version, items = await self.shared.snapshot()
        changed = await self._voices(registry, items["voices"])
        await self._consents(registry, items["consents"])
        self.version, self.synced = version, True
        if changed:
            await registry.release_unused()

    async def _voices(self, registry: VoiceRegistry, metas: dict[str, dict[str, Any]]) -> bool:
        changed = False
        for voice_id, meta in metas.items():
            have = registry.user.get(voice_id)
            if have is not None and (have.key, have.name, have.owner) == (
                meta.get("key"),
                meta.get("name"),
                meta.get("owner") or "",
            ):
                continue
            wav = await self.shared.recording("voices", voice_id)
            if wav is None:
                log.warning("shared voice %s has no recording: skipped", voice_id)
                continue
            try:
                registry.user[voice_id] = await asyncio.to_thread(_store, self.root, meta, wav)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("cannot mirror shared voice %s: %s", voice_id, exc)
                continue
            registry.quota.sizes[voice_id] = len(wav)
            changed = True
        for voice_id in [v for v in registry.user if v not in metas]:
            registry.user.pop(voice_id)
            registry.quota.sizes.pop(voice_id, None)
            await asyncio.to_thread(library.remove, self.root / voice_id)
            changed = True
        return changed

    async def _consents(self, registry: VoiceRegistry, metas: dict[str, dict[str, Any]]) -> None:
        store = registry.consents
        for consent_id, meta in metas.items():
            have = store.items.get(consent_id)
            if have is not None and asdict(have) == {"owner": "", **meta}:  # no owner: shared (older)
                continue
            wav = None if have is not None else await self.shared.recording("consents", consent_id)
            try:
                await store.mirror(Consent(**meta), wav)
            except (OSError, TypeError) as exc:
                log.warning("cannot mirror shared consent %s: %s", consent_id, exc)
        for consent_id in [c for c in store.items if c not in metas]:
            await store.forget(consent_id)

    async def publish(self, meta: dict[str, Any], staging: Path) -> None:
        """Put a voice being created into the shared library (the caller holds `lock`)."""
        wav = await asyncio.to_thread((staging / "audio.wav").read_bytes)
        await self.shared.put("voices", meta, wav)

    async def withdraw(self, voice_id: str) -> None:
        await self.shared.remove("voices", voice_id)
