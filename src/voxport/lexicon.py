"""The pronunciation lexicon: words the model misreads, respelled the way they should sound.

VoxCPM2 reads text, not phonemes, so an entry maps a word (or a short phrase) to a respelling:
`{"nginx": "engine x", "SQL": "sequel"}`. Entries come from the server's lexicon file (`--lexicon-file`,
re-read by POST /admin/reload-voices) and from a request's `pronunciations`, which win over the file's.

Matching is whole-word: an entry matches only where neither side of it touches a letter, digit or
underscore ("cat" matches in "a cat." but not in "catalogue"). It is case-aware:
- a key written all in lower case matches the word in any casing ("gif" matches gif, GIF and Gif);
- a key with a capital letter in it matches only that exact casing ("US" matches US, not "us");
- where several keys match at one place, the longest wins, and at equal length an exact-case key wins;
- a lower-case key that matched a capitalised word (Gif: first letter upper case, the rest not) has its
  respelling's first letter capitalised, so a sentence still starts with a capital; any other match gets
  the respelling exactly as written.
Every place is rewritten once, in one pass: a respelling is never looked up again.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

MAX_KEY_CHARS = 100
MAX_RESPELLING_CHARS = 200
MAX_FILE_ENTRIES = 10_000


class LexiconError(ValueError):
    """The lexicon file is unreadable or invalid; the message names the entry."""


def check_entry(key: str, value: str) -> str | None:
    """Why `key` -> `value` is not a usable entry, or None."""
    if not key.strip() or key != key.strip():
        return "a key must be a non-empty word or phrase without leading or trailing spaces"
    if len(key) > MAX_KEY_CHARS or len(value) > MAX_RESPELLING_CHARS:
        return f"keys are at most {MAX_KEY_CHARS} characters, respellings at most {MAX_RESPELLING_CHARS}"
    if not value.strip():
        return "a respelling must not be empty"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in key + value):
        return "keys and respellings must not contain control characters or unpaired surrogates"
    return None


def read_file(path: Path) -> dict[str, str]:
    """A lexicon file: a JSON object of word -> respelling (blocking; call it in a worker thread)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LexiconError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise LexiconError(f"{path}: must be a JSON object of word -> respelling strings")
    if len(data) > MAX_FILE_ENTRIES:
        raise LexiconError(f"{path}: {len(data)} entries; at most {MAX_FILE_ENTRIES}")
    for key, value in data.items():
        problem = check_entry(key, value)
        if problem:
            raise LexiconError(f"{path}: entry {key!r}: {problem}")
    return data


@dataclass(frozen=True)
class _Compiled:
    pattern: re.Pattern[str] | None
    exact: dict[str, str]  # keys with a capital letter
    folded: dict[str, str]  # lower-case keys


def _compile(entries: dict[str, str]) -> _Compiled:
    exact = {k: v for k, v in entries.items() if k != k.lower()}
    folded = {k: v for k, v in entries.items() if k == k.lower()}
    if not entries:
        return _Compiled(None, exact, folded)
    # Longest first (then exact-case first): the regex takes the first alternative that matches.
    order = sorted(entries, key=lambda k: (-len(k), k == k.lower()))
    alternatives = "|".join(re.escape(k) if k in exact else f"(?i:{re.escape(k)})" for k in order)
    return _Compiled(re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"), exact, folded)


class Lexicon:
    """The server's entries (swapped whole on reload) and the rewriting of a request's text."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: dict[str, str] = {}
        self._compiled = _compile({})
        self._merged: dict[tuple[tuple[str, str], ...], _Compiled] = {}  # recent extras, compiled

    def read(self) -> dict[str, str]:
        """The file's entries, checked, without using them (blocking)."""
        return read_file(self.path) if self.path is not None else {}

    def use(self, entries: dict[str, str]) -> None:
        self.entries = entries
        self._compiled = _compile(entries)
        self._merged = {}

    def _with(self, extra: dict[str, str]) -> _Compiled:
        """The file's entries with `extra` over them, compiled once for a recent `extra` (a request's
        dictionaries come back with every turn or block, and with the next request)."""
        key = tuple(extra.items())
        found = self._merged.get(key)
        if found is None:
            if len(self._merged) >= 32:
                self._merged.clear()
            found = self._merged[key] = _compile({**self.entries, **extra})
        return found

    def apply(self, text: str, extra: dict[str, str] | None = None) -> tuple[str, list[list[str]]]:
        """`text` with every entry applied, and the entries that were (sorted [key, respelling] pairs: the
        part of the lexicon this text's audio depends on, for its cache key)."""
        compiled = self._with(extra) if extra else self._compiled
        if compiled.pattern is None:
            return text, []
        used: set[tuple[str, str]] = set()

        def respell(match: re.Match[str]) -> str:
            word = match.group(0)
            if word in compiled.exact:
                used.add((word, compiled.exact[word]))
                return compiled.exact[word]
            value = compiled.folded.get(word.lower())
            if value is None:  # a casing whose lower() differs from the key's (rare: "İ")
                return word
            used.add((word.lower(), value))
            if word[0].isupper() and not word.isupper():
                return value[0].upper() + value[1:]
            return value

        return compiled.pattern.sub(respell, text), sorted([k, v] for k, v in used)
