"""Pronunciation dictionaries: named word → respelling maps kept under the data directory
(`pronunciation_dictionaries/`), managed by admin routes, each scoped: `global` (every request that
names it), `language` (requests in that `language`), `voice` (the text that voice speaks: `input`'s
voice, a dialogue turn's, an SSML block's).

A request names up to 3 (`pronunciation_dictionaries`). For each piece of text, the entries in force are,
later winning over earlier for the same key: the server's lexicon file, then the named dictionaries whose
scope applies, in the order named, then the request's own `pronunciations` (voxport/lexicon.py applies
them). Every dictionary that applies enters the cache key by its content hash.

Entries come as JSON or from a W3C PLS document (parsed with defusedxml, DTDs forbidden): an `<alias>`
lexeme is a respelling; a `<phoneme>` one only with `alphabet="x-respell"` (VoxCPM2 reads text, not IPA
or X-SAMPA: other lexemes are skipped and listed). Files are read and written in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from voxport.engine.base import LANGUAGES
from voxport.errors import VoxportError, invalid
from voxport.files import Watched, atomic_write
from voxport.lexicon import check_entry
from voxport.protocol import PronunciationDictionaryParams
from voxport.protocol.dictionaries import MAX_DICTIONARY_ENTRIES

RESPELLING_ALPHABET = "x-respell"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Dictionary:
    name: str
    scope: str
    entries: dict[str, str]
    content_hash: str
    created_at: int
    language: str | None = None
    voice: str | None = None
    skipped: list[str] = field(default_factory=list)

    def applies(self, voice: str | None, language: str | None) -> bool:
        if self.scope == "language":
            return language == self.language
        if self.scope == "voice":
            return voice is not None and voice == self.voice
        return True

    def public(self) -> dict[str, Any]:
        return asdict(self)


def in_force(dictionaries: tuple[Dictionary, ...], voice: str | None, language: str | None,
             own: dict[str, str] | None) -> tuple[dict[str, str] | None, list[str]]:  # fmt: skip
    """The entries over the server's lexicon for text `voice` speaks in `language` (the dictionaries that
    apply, in order, then the request's own `own`), and the content hashes of those dictionaries."""
    applying = [d for d in dictionaries if d.applies(voice, language)]
    if not applying:
        return own, []
    merged: dict[str, str] = {}
    for dictionary in applying:
        merged.update(dictionary.entries)
    return {**merged, **(own or {})}, [d.content_hash for d in applying]


def content_hash(scope: str, language: str | None, voice: str | None, entries: dict[str, str]) -> str:
    body = json.dumps([scope, language, voice, sorted(entries.items())], ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _local(element: ET.Element) -> str:
    return str(element.tag).rsplit("}", 1)[-1]


def read_pls(text: str) -> tuple[dict[str, str], list[str]]:
    """A PLS document's usable entries, and the graphemes of the lexemes it could not use."""
    try:
        root = fromstring(text, forbid_dtd=True)
    except DefusedXmlException:
        raise invalid("'pls' must not declare a DTD, entities or external references.", "pls",
                      "invalid_pls") from None  # fmt: skip
    except ET.ParseError as exc:
        line, column = exc.position
        raise invalid(f"Malformed PLS in 'pls' at line {line}, column {column + 1}.", "pls",
                      "invalid_pls") from None  # fmt: skip
    if _local(root) != "lexicon":
        raise invalid(
            f"'pls': the root element must be <lexicon>, not <{_local(root)}>.", "pls", "invalid_pls"
        )
    default_alphabet = root.get("alphabet", "")
    entries: dict[str, str] = {}
    skipped: list[str] = []
    for lexeme in (e for e in root if _local(e) == "lexeme"):
        graphemes = [(g.text or "").strip() for g in lexeme if _local(g) == "grapheme"]
        respelling = None
        for child in lexeme:
            alphabet = child.get("alphabet", lexeme.get("alphabet", default_alphabet))
            if _local(child) == "alias" or (_local(child) == "phoneme" and alphabet == RESPELLING_ALPHABET):
                respelling = (child.text or "").strip()
                break
        for grapheme in graphemes:
            if respelling:
                problem = check_entry(grapheme, respelling)
                if problem:
                    raise invalid(f"'pls': lexeme {grapheme!r}: {problem}.", "pls", "invalid_pls")
                entries[grapheme] = respelling
            elif grapheme:
                skipped.append(grapheme)
    if len(entries) > MAX_DICTIONARY_ENTRIES:
        raise invalid(f"'pls' has {len(entries)} usable lexemes; at most {MAX_DICTIONARY_ENTRIES}.", "pls")
    return entries, skipped


def _read_all(directory: Path) -> dict[str, Dictionary]:
    found = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        data = json.loads(path.read_text(encoding="utf-8"))
        found[data["name"]] = Dictionary(**data)
    return found


def _not_found(name: str, param: str = "name") -> VoxportError:
    return VoxportError("not_found", f"No pronunciation dictionary '{name}'.", param=param,
                        code="dictionary_not_found")  # fmt: skip


class DictionaryStore:
    """The dictionaries on disk, one JSON file each, kept in memory and read again when the folder changes
    (another worker of `--workers N` wrote or removed one: one stat tells)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._items: dict[str, Dictionary] = {}
        self._fresh = Watched(directory, _read_all)

    async def _all(self) -> dict[str, Dictionary]:
        fresh = await self._fresh.fresh()
        if fresh is not None:
            self._items = fresh
        return self._items

    async def put(self, name: str, params: PronunciationDictionaryParams) -> Dictionary:
        """Create or replace `name`."""
        if not _NAME.match(name):
            raise invalid("A dictionary's name is 1 – 64 letters, digits, '.', '_' or '-', starting with a "
                          "letter or digit.", "name")  # fmt: skip
        if (params.entries is None) == (params.pls is None):
            raise invalid("Give the entries either as 'entries' or as a PLS document in 'pls'.", "entries")
        for key, scope in (("language", "language"), ("voice", "voice")):
            if (params.scope == scope) != (getattr(params, key) is not None):
                raise invalid(f"'{key}' is given with scope '{scope}', and only then.", key)
        if params.language is not None and params.language not in LANGUAGES:
            raise invalid(f"language '{params.language}' is not one VoxCPM2 speaks; use one of "
                          f"{', '.join(sorted(LANGUAGES))}.", "language", "unsupported_language")  # fmt: skip
        skipped: list[str] = []
        if params.pls is not None:
            entries, skipped = await asyncio.to_thread(read_pls, params.pls)
        else:
            entries = dict(params.entries or {})
        digest = content_hash(params.scope, params.language, params.voice, entries)
        made = Dictionary(name, params.scope, entries, digest, int(time.time()), params.language,
                          params.voice, skipped)  # fmt: skip
        body = json.dumps(made.public(), ensure_ascii=False).encode()
        items = await self._all()
        await asyncio.to_thread(atomic_write, self.directory / f"{name}.json", body)
        items[name] = made
        return made

    async def get(self, name: str) -> Dictionary:
        found = (await self._all()).get(name) if _NAME.match(name) else None
        if found is None:
            raise _not_found(name)
        return found

    async def list(self) -> list[Dictionary]:
        return sorted((await self._all()).values(), key=lambda d: d.name)

    async def delete(self, name: str) -> None:
        items = await self._all()
        if name not in items or not _NAME.match(name):
            raise _not_found(name)
        await asyncio.to_thread((self.directory / f"{name}.json").unlink, True)
        items.pop(name, None)

    async def resolve(self, names: list[str] | None) -> tuple[Dictionary, ...]:
        """A request's dictionaries, in the order named; an unknown one is an `invalid` error."""
        if not names:
            return ()
        items = await self._all()
        for index, name in enumerate(names):
            if name not in items:
                raise invalid(f"No pronunciation dictionary '{name}'. See GET "
                              "/v1/audio/pronunciation_dictionaries.", f"pronunciation_dictionaries[{index}]",
                              "dictionary_not_found")  # fmt: skip
        return tuple(items[name] for name in names)
