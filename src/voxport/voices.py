"""Voices, from voices.json. This build knows designed voices: a VoxCPM2 voice-design description
(the parenthesised prefix VoxCPM2 reads at the start of the text) and a seed."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The repository's voices.json, next to src/ (editable installs and the Docker image have it).
DEFAULT_VOICES_FILE = Path(__file__).resolve().parents[2] / "voices.json"


class VoicesFileError(ValueError):
    """voices.json is missing or invalid; the message names the entry and field."""


class DesignedVoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = Field(min_length=1, max_length=1000)
    seed: int = Field(ge=0, le=2**32 - 1)

    @field_validator("description")
    @classmethod
    def _no_brackets(cls, value: str) -> str:
        if "(" in value or ")" in value:
            raise ValueError("must not contain parentheses (it becomes a parenthesised prefix)")
        return value.strip()


class VoicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voices: list[DesignedVoice] = Field(min_length=1)


def load_voices(path: Path) -> dict[str, DesignedVoice]:
    """Read and validate voices.json; raise VoicesFileError naming the entry and field at fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VoicesFileError(f"voices file {path} does not exist (set --voices-file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoicesFileError(f"voices file {path} cannot be read: {exc}") from None
    try:
        parsed = VoicesFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        where = "voices file"
        if len(loc) >= 2 and loc[0] == "voices" and isinstance(loc[1], int):
            entries = data.get("voices", []) if isinstance(data, dict) else []
            entry = entries[loc[1]] if loc[1] < len(entries) else None
            name = entry.get("id") if isinstance(entry, dict) else None
            where = f"voice #{loc[1] + 1}" + (f" ({name!r})" if name else "")
            loc = loc[2:]
        field = ".".join(map(str, loc)) or "entry"
        raise VoicesFileError(f"{path}: {where}, field '{field}': {first['msg']}") from None
    voices: dict[str, DesignedVoice] = {}
    for voice in parsed.voices:
        if voice.id in voices:
            raise VoicesFileError(f"{path}: voice {voice.id!r} is listed twice")
        voices[voice.id] = voice
    return voices


def design_prefix(description: str | None, instructions: str | None) -> str:
    """The parenthesised voice-design prefix for a request, or '' when there is nothing to say.

    Brackets inside `instructions` become square ones so that they cannot close the prefix early.
    """
    parts = [p.strip() for p in (description, instructions) if p and p.strip()]
    if not parts:
        return ""
    text = "; ".join(parts).replace("(", "[").replace(")", "]")
    return f"({text})"
