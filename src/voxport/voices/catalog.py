"""The voice catalogue: voices.json, validated with pydantic, and the `Voice` record every voice has.

Three kinds of built-in voice:
- recording + transcript: continuation cloning (`{"id", "wav", "text"}`);
- recording alone: reference cloning (`{"id", "wav"}`);
- designed (`{"id", "description", "seed"}`): the first time it is used, a short clip is synthesised from
  the description with the fixed seed and stored in the data dir; from then on the voice is cloned from
  that clip, so it sounds the same across requests and restarts.
User voices (uploaded through the API) are recordings kept in the data dir (see library.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class VoicesFileError(ValueError):
    """voices.json is missing or invalid; the message names the entry and field."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, pattern=_ID_PATTERN)


class DesignedEntry(_Entry):
    description: str = Field(min_length=1, max_length=1000)
    seed: int = Field(ge=0, le=2**32 - 1)

    @field_validator("description")
    @classmethod
    def _no_brackets(cls, value: str) -> str:
        if "(" in value or ")" in value:
            raise ValueError("must not contain parentheses (it becomes a parenthesised prefix)")
        return value.strip()


class RecordingEntry(_Entry):
    wav: str = Field(min_length=1, description="Path relative to the voices directory.")
    text: str | None = Field(None, min_length=1, max_length=1000)


_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class VoicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voices: list[DesignedEntry | RecordingEntry] = Field(min_length=1)
    # alias -> a voice id or a library voice's name (voices/aliases.py)
    aliases: dict[_Name, _Name] = Field(default_factory=dict)


@dataclass
class Voice:
    id: str
    kind: Literal["designed", "recording", "uploaded"]
    source: Literal["built-in", "user"]
    key: str  # content hash: audio + transcript (or description + seed + weights for a designed voice)
    name: str = ""
    transcript: str | None = None
    audio: Path | None = None  # server-side only, never shown
    description: str | None = None
    seed: int | None = None
    duration: float | None = None
    created: float = field(default_factory=time.time)
    consent: str | None = None  # the consent id a user voice was created with
    owner: str = ""  # the tenant a user voice belongs to ('': shared; voxport.tenants), never shown

    def public(self, default: str) -> dict:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "type": "prompt" if self.kind == "designed" else "audio_sample",
            "created_at": int(self.created),
            "prompt": self.description,
            "consent": self.consent,
            "kind": self.kind,
            "source": self.source,
            "has_transcript": bool(self.transcript),
            "duration": None if self.duration is None else round(self.duration, 2),
            "default": self.id == default,
        }


def content_key(audio_bytes: bytes, transcript: str | None) -> str:
    return hashlib.md5(audio_bytes + b"\0" + (transcript or "").encode()).hexdigest()


def _inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _describe_error(path: Path, data: object, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = list(first["loc"])
    where = "voices file"
    if len(loc) >= 2 and loc[0] == "voices" and isinstance(loc[1], int):
        entries = data.get("voices", []) if isinstance(data, dict) else []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = entry.get("id") if isinstance(entry, dict) else None
        where = f"voice #{loc[1] + 1}" + (f" ({name!r})" if name else "")
        loc = loc[2:]
        if loc and loc[0] in ("DesignedEntry", "RecordingEntry"):  # union member names
            loc = loc[1:]
    field_name = ".".join(map(str, loc)) or "entry"
    return f"{path}: {where}, field '{field_name}': {first['msg']}"


def load_voices_file(path: Path, voices_dir: Path, fingerprint: str = "") -> dict[str, Voice]:
    """Read and validate voices.json; raise VoicesFileError naming the entry and field at fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VoicesFileError(f"voices file {path} does not exist (set --voices-file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoicesFileError(f"voices file {path} cannot be read: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("voices"), list):
        # A recording entry with a description is a mistake worth naming, not a silent pick of a kind.
        for i, entry in enumerate(data["voices"]):
            if isinstance(entry, dict) and "wav" in entry and "description" in entry:
                raise VoicesFileError(f"{path}: voice #{i + 1}: give either 'wav' or 'description', not both")
    try:
        parsed = VoicesFile.model_validate(data)
    except ValidationError as exc:
        raise VoicesFileError(_describe_error(path, data, exc)) from None
    voices: dict[str, Voice] = {}
    for number, entry in enumerate(parsed.voices, 1):
        if entry.id in voices:
            raise VoicesFileError(f"{path}: voice {entry.id!r} is listed twice")
        if isinstance(entry, DesignedEntry):
            key = hashlib.md5(f"{entry.description}\0{entry.seed}\0{fingerprint}".encode()).hexdigest()
            voices[entry.id] = Voice(
                entry.id, "designed", "built-in", key, description=entry.description, seed=entry.seed
            )
            continue
        wav = voices_dir / entry.wav
        if Path(entry.wav).is_absolute() or not _inside(voices_dir, wav):
            raise VoicesFileError(
                f"{path}: voice #{number} ({entry.id!r}), field 'wav': must stay inside {voices_dir}"
            )
        if not wav.is_file():
            raise VoicesFileError(
                f"{path}: voice #{number} ({entry.id!r}), field 'wav': {entry.wav} does not exist"
            )
        voices[entry.id] = Voice(
            entry.id, "recording", "built-in", content_key(wav.read_bytes(), entry.text),
            transcript=entry.text, audio=wav.resolve(),
        )  # fmt: skip
    return voices


def design_prefix(description: str | None, instructions: str | None) -> str:
    """The parenthesised voice-design prefix for a request, or '' when there is nothing to say.

    Brackets inside the parts become square ones so that they cannot close the prefix early.
    """
    parts = [p.strip() for p in (description, instructions) if p and p.strip()]
    if not parts:
        return ""
    text = "; ".join(parts).replace("(", "[").replace(")", "]")
    return f"({text})"


def catalog_diff(old: dict[str, Voice], fresh: dict[str, Voice]) -> dict[str, list[str]]:
    """What a reload of voices.json added, changed (other audio or transcript) and removed."""
    return {
        "added": sorted(set(fresh) - set(old)),
        "changed": sorted(i for i in set(fresh) & set(old) if fresh[i].key != old[i].key),
        "removed": sorted(set(old) - set(fresh)),
    }
