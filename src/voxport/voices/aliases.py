"""Voice aliases: any name pointing at any voice (by id, or a library voice's name), so that clients that
know only OpenAI's voice names (`alloy`, ...) speak with a cloned voice.

Two sources: the `aliases` object of voices.json (re-read with it), and aliases set through the API, kept
in `<data-dir>/voices/aliases.json` (written atomically; they win over the file's). With `--workers N`
each worker reads that file again when another changed it, and a change is made under a lock file beside
it, so that two workers' changes never overwrite each other. An alias resolves when a voice is looked up,
so it follows its voice across re-uploads, and the cache key holds the voice it resolved to (by content),
never the alias. An alias whose voice is gone resolves to nothing: the name then means what it meant
without it."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from voxport.errors import VoxportError
from voxport.files import Watched, atomic_write

if TYPE_CHECKING:
    from voxport.voices.catalog import Voice

log = logging.getLogger("voxport.voices")

MAX_ALIASES = 1000


def _read(path: Path) -> dict[str, str] | None:
    """The API's aliases on disk (blocking); None, said in the log, when the file cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("voice aliases in %s not read (%s): none are set", path, exc)
        return None
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def file_aliases(voices_file: Path) -> dict[str, str]:
    """voices.json's `aliases` (already validated with the file)."""
    data = json.loads(voices_file.read_text(encoding="utf-8"))
    return {str(k).strip(): str(v).strip() for k, v in (data.get("aliases") or {}).items()}


class AliasStore:
    def __init__(self, path: Path, find: Callable[[str], Voice | None]):
        self.path = path
        self.find = find  # a voice by id or library name, aliases aside
        self.file: dict[str, str] = {}  # from voices.json
        self.set: dict[str, str] = {}  # through the API, persisted
        self._lock = asyncio.Lock()
        self._fresh = Watched(path, _read)

    async def refresh(self) -> None:
        """Take in what other workers on this data dir set or deleted (one stat when nothing changed)."""
        fresh = await self._fresh.fresh()
        if fresh is not None:
            self.set = fresh

    def target(self, name: str) -> str | None:
        return self.set.get(name) or self.file.get(name)

    def resolve(self, name: str) -> Voice | None:
        """The voice `name` means: its alias's voice if that exists, else the voice of that id or name."""
        target = self.target(name)
        return (self.find(target) if target is not None else None) or self.find(name)

    def all(self) -> dict[str, tuple[str, str]]:
        """name -> (target, source): "file" or "api"."""
        found = {name: (target, "file") for name, target in self.file.items()}
        found.update({name: (target, "api") for name, target in self.set.items()})
        return dict(sorted(found.items()))

    def public(self) -> list[dict[str, str | None]]:
        """Every alias, with the voice id it resolves to now (None: its voice is gone)."""
        listed = []
        for name, (target, source) in self.all().items():
            voice = self.find(target)
            listed.append({"name": name, "voice": target, "voice_id": voice.id if voice else None,
                           "source": source})  # fmt: skip
        return listed

    def listed(self, voices: list[Voice]) -> list[tuple[str, str]]:
        """(id, name) of every voice and every live alias, as GET /v1/audio/voices lists them: an alias
        is one more voice a client can name; one that shares a voice's id takes its place."""
        live = [name for name, (target, _) in self.all().items() if self.find(target) is not None]
        entries = {voice.id: voice.name or voice.id for voice in voices}
        entries.update({name: name for name in live})
        return list(entries.items())

    async def put(self, name: str, target: str) -> Voice:
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise VoxportError("invalid", "An alias name is 1-100 printable characters.", param="name")
        voice = self.find(target)
        if voice is None:
            message = f"No voice '{target}' (an id, or a library voice's name) to point at."
            raise VoxportError("invalid", message, param="voice", code="voice_not_found")

        def put(aliases: dict[str, str]) -> dict[str, str]:
            if name not in aliases and len(aliases) >= MAX_ALIASES:
                raise VoxportError("conflict", f"At most {MAX_ALIASES} voice aliases can be set.",
                                   code="too_many_aliases")  # fmt: skip
            return {**aliases, name: target}

        await self._change(put)
        return voice

    async def delete(self, name: str) -> None:
        def delete(aliases: dict[str, str]) -> dict[str, str]:
            if name not in aliases:
                if name in self.file:
                    message = f"The alias '{name}' is set in voices.json; change it there."
                    raise VoxportError("forbidden", message, code="forbidden")
                raise VoxportError("not_found", f"No voice alias '{name}'.", code="alias_not_found")
            return {k: v for k, v in aliases.items() if k != name}

        await self._change(delete)

    async def _change(self, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        async with self._lock:
            self.set = await asyncio.to_thread(self._rewrite, change)

    def _rewrite(self, change: Callable[[dict[str, str]], dict[str, str]]) -> dict[str, str]:
        """`change` the aliases on disk, as they are now, under the lock file every worker takes; blocking."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f"{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            aliases = change(_read(self.path) or {})
            atomic_write(
                self.path, json.dumps(aliases, ensure_ascii=False, indent=1, sort_keys=True).encode()
            )
        return aliases
