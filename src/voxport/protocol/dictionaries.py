"""Pronunciation dictionaries (voxport extension): named word → respelling maps kept by the server, each
scoped (global, one language, one voice), named by a speech request's `pronunciation_dictionaries`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from voxport.protocol.fields import Language, NonEmpty, Text, _pronunciations

MAX_DICTIONARY_ENTRIES = 1000
MAX_REQUEST_DICTIONARIES = 3
MAX_PLS_CHARS = 1_000_000

DictionaryName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
DictionaryEntries = Annotated[
    dict[str, str], Field(max_length=MAX_DICTIONARY_ENTRIES), AfterValidator(_pronunciations)
]


class PronunciationDictionaryParams(BaseModel):
    """PUT /v1/audio/pronunciation_dictionaries/{name}: its scope, and its entries as JSON (`entries`) or
    as a W3C Pronunciation Lexicon Specification document (`pls`), not both."""

    model_config = ConfigDict(extra="forbid")
    scope: Literal["global", "language", "voice"] = "global"
    language: Language | None = None  # scope "language": the requests in that `language`
    voice: NonEmpty | None = None  # scope "voice": the text that voice speaks
    entries: DictionaryEntries | None = None
    pls: Text | None = Field(None, min_length=1, max_length=MAX_PLS_CHARS)


class PronunciationDictionary(BaseModel):
    object: Literal["pronunciation_dictionary"] = "pronunciation_dictionary"
    name: str
    scope: Literal["global", "language", "voice"]
    language: str | None = None
    voice: str | None = None
    entries: dict[str, str]
    content_hash: str  # of the scope and entries: what a request's cache key holds when it applies
    created_at: int
    skipped: list[str] = []  # PLS lexemes that could not be used (a phoneme alphabet VoxCPM2 cannot read)


class PronunciationDictionaryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PronunciationDictionary]


class PronunciationDictionaryDeleted(BaseModel):
    object: Literal["pronunciation_dictionary.deleted"] = "pronunciation_dictionary.deleted"
    name: str
    deleted: bool = True
