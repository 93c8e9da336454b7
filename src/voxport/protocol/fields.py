"""The validators and field types every request model shares: no control characters in names, ids
and paths; free text may also hold tabs and line breaks."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

from voxport.lexicon import check_entry

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm", "mulaw", "alaw"]
StreamFormat = Literal["audio", "sse"]
_LINE_BREAKS = frozenset("\t\n\r")


def control_character(value: str, allow: frozenset[str] = frozenset()) -> str | None:
    """The first control character (or unpaired surrogate) in `value` not in `allow`, as U+XXXX."""
    for char in value:
        if char not in allow and unicodedata.category(char) in ("Cc", "Cs"):
            return f"U+{ord(char):04X}"
    return None


def _plain(value: str) -> str:
    found = control_character(value)
    if found:
        raise ValueError(f"must not contain control characters ({found})")
    return value


def _text(value: str) -> str:
    found = control_character(value, _LINE_BREAKS)
    if found:
        raise ValueError(f"must not contain control characters other than tabs and line breaks ({found})")
    return value


# Names, ids and paths: no control character at all. Free text (what is spoken, styled or transcribed)
# may also hold tabs and line breaks. NUL in a path used to reach the file system as a 500.
Plain = Annotated[str, AfterValidator(_plain)]
Text = Annotated[str, AfterValidator(_text)]
NonEmpty = Annotated[str, Field(min_length=1), AfterValidator(_plain)]


# The checks every way of creating a library voice shares (multipart and JSON alike).
VoiceName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(_plain)
]
Transcript = Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000), AfterValidator(_text)]


# Per-request lexicon entries (voxport/lexicon.py): word -> respelling, a bounded map.
MAX_PRONUNCIATIONS = 100


def _pronunciations(value: dict[str, str]) -> dict[str, str]:
    for key, respelling in value.items():
        problem = check_entry(key, respelling)
        if problem:
            raise ValueError(f"entry {key!r}: {problem}")
    return value


Pronunciations = Annotated[
    dict[str, str], Field(max_length=MAX_PRONUNCIATIONS), AfterValidator(_pronunciations)
]


def _primary_language(value: object) -> object:
    """`EN`, `en-US`, `zh_CN`, `zh-Hant-TW` -> `en`, `en`, `zh`, `zh`: a BCP 47 tag's language, in lower
    case (the region or script changes nothing in voxport's text rules)."""
    return value.strip().replace("_", "-").split("-")[0].lower() if isinstance(value, str) else value


# An ISO 639-1 code, or a BCP 47 tag in any case reduced to it; which languages the model speaks is checked
# against the engine's list (speech/prepare.py: 400 unsupported_language, listing them).
Language = Annotated[str, BeforeValidator(_primary_language)]
# Target integrated loudness, LUFS (ITU-R BS.1770).
Loudness = Annotated[float, Field(ge=-50.0, le=-5.0)]
