"""A speech socket context's SSML (`input_format: "ssml"` on its first message): text in, documents out.

An SSML document cannot be read before it is complete (a fragment is not well-formed XML, and what an
element means depends on where it closes), so the text is held until it holds a whole document: a
`<speak>` element closed by its `</speak>` is spoken at once; anything else (a fragment without a root)
waits for `flush` or `close`. The buffer delay does not cut a document. Each document goes through
voxport.speech.ssml as HTTP's `input_format: "ssml"` does, and its blocks become segments cut by sentence,
each with its block's voice, rate and pause. Offsets count characters of the text content of the
context's documents, joined in order (each document's `"".join(root.itertext())`, as on HTTP).
"""

from __future__ import annotations

import re

from voxport.agents.buffer import Piece
from voxport.errors import VoxportError, invalid
from voxport.speech import ssml
from voxport.speech.script import spans
from voxport.text import segment

_CLOSE = re.compile(r"</(?:\w+:)?speak\s*>")


class SsmlBuffer:
    def __init__(self, language: str | None, max_chars: int):
        self.language = language
        self.max_chars = max_chars  # a sentence longer than this is cut, as long `input` is
        self.text = ""
        self.taken = 0  # characters of text content in the documents spoken so far
        self.warnings: list[str] = []  # of the documents parsed since last read

    @property
    def pending(self) -> bool:
        return bool(self.text.strip())

    def add(self, text: str) -> list[Piece]:
        """Append `text`; the segments of the documents it completed."""
        self.text += text
        pieces: list[Piece] = []
        while self.text.lstrip().startswith(("<speak", "<?xml")) and (end := _CLOSE.search(self.text)):
            document, self.text = self.text[: end.end()], self.text[end.end() :]
            pieces += self._read(document)
        return pieces

    def drain(self) -> list[Piece]:
        """The segments of what is held, read as one document (flush, close)."""
        document, self.text = self.text, ""
        return self._read(document) if document.strip() else []

    def _read(self, document: str) -> list[Piece]:
        try:
            script = ssml.parse(document, self.language)
        except VoxportError as exc:  # the socket's field is `text`
            message = exc.message.replace("'input'", "the context's SSML text")
            raise invalid(message, "text", exc.code) from None
        self.warnings += script.warnings
        pieces: list[Piece] = []
        for block in script.blocks:
            texts = segment(block.text, self.max_chars, pack=False, language=self.language)
            found = spans(texts, block.source, block.start + self.taken)
            for n, span in enumerate(found):
                assert span.origin is not None
                pause = block.pause if n == len(found) - 1 else 0.0
                pieces.append(Piece(span.text, *span.origin, source=span.input_text,
                                    voice=block.voice, rate=block.rate, pause=pause))  # fmt: skip
        self.taken += len(script.content)
        return pieces
