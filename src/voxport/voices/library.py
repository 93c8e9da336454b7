"""The user's voice library on disk: one folder per voice (`audio.wav` + `voice.json`), written through a
staging folder and renamed into place so that a crash never leaves half a voice. Every function here
does blocking file I/O: the registry calls them in worker threads."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from voxport.audio import write_wav
from voxport.files import TEMP_PREFIX
from voxport.voices.catalog import Voice

log = logging.getLogger("voxport.voices")


def read(library: Path) -> dict[str, Voice]:
    voices: dict[str, Voice] = {}
    if not library.is_dir():
        return voices
    for folder in sorted(library.iterdir()):
        if folder.name.startswith(TEMP_PREFIX):  # a creation interrupted by a crash
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
            voices[meta["id"]] = Voice(
                meta["id"], "uploaded", "user", meta["key"], name=meta["name"],
                transcript=meta.get("transcript"), audio=folder / "audio.wav", duration=meta["duration"],
                created=meta["created"],
            )  # fmt: skip
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping unreadable library voice %s: %s", folder.name, exc)
    return voices


def size(voices: list[Voice]) -> int:
    """Bytes of recordings the library holds."""
    return sum(v.audio.stat().st_size for v in voices if v.audio and v.audio.exists())


def stage(library: Path, samples: np.ndarray, rate: int, meta: dict[str, Any]) -> Path:
    """Write a voice into a fresh staging folder; `commit` renames it into place."""
    staging = library / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(parents=True)
    try:
        write_wav(str(staging / "audio.wav"), samples, rate)
        (staging / "voice.json").write_text(json.dumps(meta), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def commit(staging: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def clear_scratch(scratch: Path) -> None:
    """Remove the scratch files of a process that was killed."""
    scratch.mkdir(parents=True, exist_ok=True)
    for leftover in scratch.iterdir():
        with contextlib.suppress(OSError):
            leftover.unlink()
