"""What start-up could not read and skipped, so that one bad file never stops the server: a library voice
whose recording does not decode, a consent whose JSON is invalid (or nested past the parser's depth), a job
row that does not parse, a cache entry that is not a file. Each is logged once, left in place for an
operator to look at, and named in /health's `skipped` by kind and name (an id or file name, never a
server path); everything else serves."""

from __future__ import annotations

import logging

log = logging.getLogger("voxport")

# Reading untrusted JSON can fail with any of these (RecursionError: nesting past the parser's depth).
UNREADABLE = (OSError, ValueError, TypeError, KeyError, RecursionError)


class SkippedFiles:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str], None] = {}  # insertion-ordered; added to from worker threads

    def add(self, kind: str, name: str, reason: object) -> None:
        if (kind, name) in self._items:
            return
        self._items[(kind, name)] = None
        log.warning("skipped unreadable %s %s: %s", kind, name, str(reason)[:200])

    @property
    def items(self) -> list[tuple[str, str]]:
        return list(self._items)
