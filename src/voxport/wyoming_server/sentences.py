"""Streaming synthesis' text: chunks in, complete sentences out as soon as each one ends."""

from __future__ import annotations

from voxport.text import split_sentences

# Appended while looking for boundaries: not whitespace, so a sentence mark followed by a space counts as
# an end ("Hello. " ends "Hello."), while text with no boundary yet stays one open piece.
_SENTINEL = "\x00"


class SentenceBuffer:
    """Collects text chunks; `add` returns the sentences they completed, `flush` what is left."""

    def __init__(self, language: str | None, max_chars: int):
        self.language = language
        self.max_chars = max_chars  # an open piece this long is spoken as it is (bounded memory)
        self.pending = ""

    def add(self, chunk: str) -> list[str]:
        self.pending += chunk
        pieces = split_sentences(self.pending + _SENTINEL, self.language)
        # The last piece holds the sentinel (never stripped): it is the sentence still open.
        complete, self.pending = pieces[:-1], pieces[-1][: -len(_SENTINEL)]
        if len(self.pending) >= self.max_chars:
            complete.append(self.pending.strip())
            self.pending = ""
        return [s for s in complete if s.strip()]

    def flush(self) -> list[str]:
        rest, self.pending = self.pending.strip(), ""
        return [rest] if rest else []
