"""Voice consents (OpenAI's `/v1/audio/voice_consents`): a recording of the speaker agreeing to have their
voice cloned, with a label and the language of the consent phrase. Each is kept in the data dir as
`<id>.wav` (the normalised 16 kHz recording) and `<id>.json`, both written atomically; the JSON is written
last, so a consent exists once its JSON does. Held in memory once loaded; file I/O runs in worker threads.
With a shared library (`voices/mirror.py`), a change goes to it first, under the mirror's lock, and the
mirror brings in other replicas' changes through `mirror` / `forget`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from voxport.errors import VoxportError, invalid
from voxport.files import TEMP_PREFIX, atomic_write
from voxport.skipped import UNREADABLE, SkippedFiles
from voxport.tenants import visible

log = logging.getLogger("voxport.voices")


@dataclass
class Consent:
    id: str
    name: str
    language: str
    created: float
    owner: str = ""  # the tenant it belongs to ('': shared; voxport.tenants), never shown

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "language": self.language, "created_at": int(self.created)}


def _parse(path: Path) -> Consent:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    consent = Consent(**data)
    fields = (consent.id, consent.name, consent.language, consent.owner)
    if not all(isinstance(f, str) for f in fields) or not isinstance(consent.created, (int, float)):
        raise ValueError("a field has the wrong type")
    if f"{consent.id}.json" != path.name:
        raise ValueError("its id is not its file's")
    return consent


def _read(root: Path, skipped: SkippedFiles) -> dict[str, Consent]:
    found: list[Consent] = []
    if not root.is_dir():
        return {}
    for path in root.iterdir():
        if path.name.startswith(TEMP_PREFIX):  # a write a crash interrupted
            with contextlib.suppress(OSError):
                path.unlink()
        elif path.suffix == ".json":
            try:
                found.append(_parse(path))
            except UNREADABLE as exc:
                skipped.add("consent", path.stem, exc)
    return {c.id: c for c in sorted(found, key=lambda c: (c.created, c.id))}


def _write(root: Path, consent: Consent, wav: bytes | None) -> None:
    if wav is not None:
        atomic_write(root / f"{consent.id}.wav", wav)
    atomic_write(root / f"{consent.id}.json", json.dumps(asdict(consent)).encode())


def _remove(root: Path, consent_id: str) -> None:
    for suffix in (".json", ".wav"):  # the JSON first: a consent half removed no longer exists
        with contextlib.suppress(FileNotFoundError):
            (root / f"{consent_id}{suffix}").unlink()


def _offer(root: Path, consents: list[Consent]) -> list[tuple[dict[str, Any], bytes]]:
    found = []
    for consent in consents:
        with contextlib.suppress(OSError):
            found.append((asdict(consent), (root / f"{consent.id}.wav").read_bytes()))
    return found


class ConsentStore:
    def __init__(self, root: Path, shared: Any = None, skipped: SkippedFiles | None = None):
        self.root = root
        self.shared = shared  # a LibraryMirror, or None: this replica's consents only
        self.skipped = skipped or SkippedFiles()
        self._items: dict[str, Consent] = {}  # oldest first

    def _sharing(self) -> Any:
        return self.shared.lock if self.shared is not None else contextlib.nullcontext()

    async def _publish(self, consent: Consent, wav: bytes | None) -> None:
        if self.shared is not None:
            await self.shared.shared.put("consents", asdict(consent), wav)

    # -- the mirror's side (it holds its lock) ---------------------------------------------------------

    @property
    def items(self) -> dict[str, Consent]:
        return self._items

    async def mirror(self, consent: Consent, wav: bytes | None) -> None:
        await asyncio.to_thread(_write, self.root, consent, wav)
        self._items[consent.id] = consent
        self._items = dict(sorted(self._items.items(), key=lambda kv: (kv[1].created, kv[0])))

    async def forget(self, consent_id: str) -> None:
        await asyncio.to_thread(_remove, self.root, consent_id)
        self._items.pop(consent_id, None)

    async def offer(self) -> list[tuple[dict[str, Any], bytes]]:
        return await asyncio.to_thread(_offer, self.root, list(self._items.values()))

    # -- the routes' side ------------------------------------------------------------------------------

    async def load(self) -> None:
        self._items = await asyncio.to_thread(_read, self.root, self.skipped)

    def get(self, consent_id: str, param: str | None = None, viewer: str = "") -> Consent:
        """The consent, or `not_found` (another tenant's too); with `param`, an unknown id is the request's
        fault (`invalid`)."""
        found = self._items.get(consent_id)
        if found is not None and visible(found.owner, viewer):
            return found
        message = f"No voice consent '{consent_id}'."
        if param is not None:
            raise invalid(message, param, "consent_not_found")
        raise VoxportError("not_found", message, code="consent_not_found")

    def page(self, after: str | None, limit: int, viewer: str = "") -> tuple[list[Consent], bool]:
        """Newest first, those `viewer` may see; `after`: the page starts after that consent."""
        newest = [c for c in reversed(self._items.values()) if visible(c.owner, viewer)]
        start = 0
        if after is not None:
            start = newest.index(self.get(after, "after", viewer)) + 1
        return newest[start : start + limit], start + limit < len(newest)

    async def create(self, name: str, language: str, wav: bytes, owner: str = "") -> Consent:
        consent = Consent(f"cons_{secrets.token_hex(12)}", name, language, time.time(), owner)
        async with self._sharing():
            await self._publish(consent, wav)
            await asyncio.to_thread(_write, self.root, consent, wav)
            self._items[consent.id] = consent
        return consent

    async def rename(self, consent_id: str, name: str, viewer: str = "") -> Consent:
        renamed = Consent(**{**asdict(self.get(consent_id, None, viewer)), "name": name})
        async with self._sharing():
            await self._publish(renamed, None)
            await asyncio.to_thread(_write, self.root, renamed, None)
            self._items[consent_id] = renamed
        return renamed

    async def delete(self, consent_id: str) -> None:
        self.get(consent_id)
        async with self._sharing():
            if self.shared is not None:
                await self.shared.shared.remove("consents", consent_id)
            await asyncio.to_thread(_remove, self.root, consent_id)
            self._items.pop(consent_id, None)
