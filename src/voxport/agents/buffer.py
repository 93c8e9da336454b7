"""A context's text buffer: text arrives in pieces (an LLM's tokens) and leaves as segments to speak.

A segment is a sentence, cut by voxport.text's rules; a sentence longer than the clause length leaves
clause by clause. A boundary is taken only once the text after it is known, and a clause only once the
buffer is past the clause length, so a text split anywhere, even mid-word, across messages gives the
same segments as the same text in one message. `drain` takes everything (flush, close, the buffer delay).
Each segment comes with its place in the context's text (everything sent, joined): `text[start:end]`.
"""

from __future__ import annotations

from typing import NamedTuple

from voxport.text import clause_end, sentence_end


class Piece(NamedTuple):
    """A segment: its text, and the offsets of the caller's text for it in the context's text (characters).
    An SSML context's (agents/ssml.py) also carries the caller's text when it differs (say-as, sub), and
    its block's voice (None: the context's), rate (times `speed`) and pause after it (seconds)."""

    text: str
    start: int
    end: int
    source: str | None = None
    voice: str | None = None
    rate: float = 1.0
    pause: float = 0.0

    @property
    def input_text(self) -> str:
        return self.text if self.source is None else self.source


class TextBuffer:
    def __init__(self, language: str | None, clause_chars: int):
        self.language = language
        self.clause_chars = clause_chars
        self.text = ""
        self.taken = 0  # characters of the context's text before `self.text`

    @property
    def pending(self) -> bool:
        return bool(self.text.strip())

    def add(self, text: str) -> list[Piece]:
        """Append `text`; the segments now complete."""
        self.text += text
        return self._take(final=False)

    def drain(self) -> list[Piece]:
        """Every segment left, the unfinished sentence included."""
        return self._take(final=True)

    def _take(self, final: bool) -> list[Piece]:
        segments: list[Piece] = []
        while True:
            end = self._next(final)
            if end is None:
                return segments
            raw, self.text = self.text[:end], self.text[end:]
            piece = raw.strip()
            if piece:
                start = self.taken + len(raw) - len(raw.lstrip())
                segments.append(Piece(piece, start, start + len(piece)))
            self.taken += end

    def _next(self, final: bool) -> int | None:
        """Where the next segment ends, or None when it is not complete yet."""
        text, limit = self.text, self.clause_chars + 1
        if not text:
            return None
        end = sentence_end(text, self.language, final)
        if end is not None and end <= limit:
            return end
        if len(text) > limit:  # a long sentence: its first clause
            return clause_end(text, self.clause_chars)
        return len(text) if final else None
