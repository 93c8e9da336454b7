"""The user's voice library on disk: one folder per voice (`audio.wav` + `voice.json`), written through a
staging folder and renamed into place so that a crash never leaves half a voice. Every function here
does blocking file I/O: the registry calls them in worker threads. `Quota` holds the library's caps in
memory, so that checking them and reserving room is one step with no await in between."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxport.audio import write_wav
from voxport.errors import VoxportError
from voxport.files import TEMP_PREFIX
from voxport.skipped import UNREADABLE, SkippedFiles
from voxport.voices.catalog import Voice

log = logging.getLogger("voxport.voices")


def read(library: Path, skipped: SkippedFiles | None = None, sweep: bool = True) -> dict[str, Voice]:
    """The library's voices; one whose `voice.json` cannot be read is skipped (and told to `skipped`).
    `sweep`: remove creations interrupted by a crash (at start-up only: a re-read
    while other processes share the data dir would remove their creations in progress)."""
    voices: dict[str, Voice] = {}
    if not library.is_dir():
        return voices
    for folder in sorted(library.iterdir()):
        if folder.name.startswith(TEMP_PREFIX):
            if sweep:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("id") != folder.name:
                raise ValueError("voice.json does not describe this folder's voice")
            voices[meta["id"]] = Voice(
                meta["id"], "uploaded", "user", meta["key"], name=meta["name"],
                transcript=meta.get("transcript"), audio=folder / "audio.wav", duration=meta["duration"],
                created=meta["created"], consent=meta.get("consent"), owner=meta.get("owner") or "",
            )  # fmt: skip
        except UNREADABLE as exc:
            if skipped is not None:
                skipped.add("voice", folder.name, exc)
            else:
                log.warning("skipping unreadable library voice %s: %s", folder.name, exc)
    return voices


def reread(library: Path) -> tuple[dict[str, Voice], dict[str, int]]:
    """The voices and their sizes, read again while other processes may be creating voices."""
    voices = read(library, sweep=False)
    return voices, sizes(list(voices.values()))


def sizes(voices: list[Voice]) -> dict[str, int]:
    """Bytes of recording each library voice holds."""
    return {v.id: v.audio.stat().st_size if v.audio and v.audio.exists() else 0 for v in voices}


@dataclass(eq=False)
class Hold:
    """Room reserved for one voice being created: its name, its bytes, and whether it adds a voice."""

    name: str
    size: int
    adds: bool


@dataclass
class Quota:
    """The library's count and size caps, counting the voices being created as well as those kept."""

    max_voices: int
    max_bytes: int
    sizes: dict[str, int] = field(default_factory=dict)  # kept voice id -> bytes
    holds: list[Hold] = field(default_factory=list)

    def pending(self, name: str) -> bool:
        return any(hold.name == name for hold in self.holds)

    def reserve(self, name: str, size: int, replacing: str | None) -> Hold:
        """Room for a voice of `size` bytes (replacing the voice `replacing`), or `library_full`."""
        count = len(self.sizes) + sum(h.adds for h in self.holds) + (replacing is None)
        if count > self.max_voices:
            message = f"The voice library is full ({self.max_voices} voices)."
            raise VoxportError("conflict", message, code="library_full")
        used = sum(self.sizes.values()) - self.sizes.get(replacing or "", 0) + sum(h.size for h in self.holds)
        if used + size > self.max_bytes:
            message = "The voice library has no room for this recording."
            raise VoxportError("conflict", message, code="library_full")
        hold = Hold(name, size, replacing is None)
        self.holds.append(hold)
        return hold

    def release(self, hold: Hold, kept_as: str | None = None) -> None:
        """Give the room back; `kept_as`: the voice was kept under that id and now counts as kept."""
        self.holds.remove(hold)
        if kept_as is not None:
            self.sizes[kept_as] = hold.size


def stage(library: Path, samples: np.ndarray, rate: int, meta: dict[str, Any]) -> Path:
    """Write a voice into a fresh staging folder; `commit` renames it into place."""
    staging = library / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(parents=True)
    try:
        write_wav(str(staging / "audio.wav"), samples, rate)
        (staging / "voice.json").write_text(json.dumps(meta), encoding="utf-8")
        _private(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def stage_bytes(library: Path, wav: bytes, meta: dict[str, Any]) -> Path:
    """`stage` for a recording already encoded as WAV (one mirrored from the shared library)."""
    staging = library / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(parents=True)
    try:
        (staging / "audio.wav").write_bytes(wav)
        (staging / "voice.json").write_text(json.dumps(meta), encoding="utf-8")
        _private(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _private(staging: Path) -> None:
    """A voice's files readable by this user alone (0600, as consents are), its folder 0700."""
    for name in ("audio.wav", "voice.json"):
        os.chmod(staging / name, 0o600)
    os.chmod(staging, 0o700)


def commit(staging: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


SCRATCH_STALE_S = 3600.0  # far past any request's life: only a killed process leaves a file this old


def clear_scratch(scratch: Path) -> None:
    """Remove the scratch files of a process that was killed. Only stale ones: with --workers, the other
    workers sharing this data dir may be decoding an upload there right now."""
    scratch.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - SCRATCH_STALE_S
    for leftover in scratch.iterdir():
        with contextlib.suppress(OSError):
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
