"""Sentence segmentation for long input.

Boundaries: `. ! ? ;` followed by whitespace, the CJK marks `。！？；` anywhere, and line breaks. Not a
boundary: a dot inside a number (3.14) or a URL or file name (example.com/a.b), since no whitespace
follows; a dot after a known abbreviation (Mr., e.g., etc.) or a single-letter initial (J. R. R.).
Closing quotes and brackets stay with their sentence. A sentence longer than `max_chars` is cut at its
last comma, then its last space, before the cap, else hard at the cap (run-on text without either).
"""

from __future__ import annotations

import re

# Words whose trailing dot rarely ends a sentence. ("no." is left out: "I said no." is common.)
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "eg", "ie",
        "fig", "figs", "approx", "inc", "ltd", "co", "corp", "dept", "jan", "feb", "mar", "apr", "jun",
        "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "ph.d", "cf", "al",
        "vol",
    }
)  # fmt: skip
_CLOSERS = "\"')]}’”」』）"
# A candidate end: Western marks (needing whitespace after), CJK marks, or a line break.
_END = re.compile(
    r"([.!?;]+[" + re.escape(_CLOSERS) + r"]*)(?=\s)|([。！？；]+[" + re.escape(_CLOSERS) + r"]*)|(\n+)"
)
_WORD_BEFORE = re.compile(r"([\w.]+)$")


def _is_abbreviation(before: str) -> bool:
    match = _WORD_BEFORE.search(before)
    if not match:
        return False
    word = match.group(1).lower().rstrip(".")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences, stripped, none empty."""
    sentences: list[str] = []
    start = 0
    for match in _END.finditer(text):
        end = match.end()
        western = match.group(1)
        single_dot = western is not None and western.rstrip(_CLOSERS) == "."
        if single_dot and _is_abbreviation(text[start : match.start()]):
            continue
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _cut(sentence: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cut = max(window.rfind(","), window.rfind("，"), window.rfind("、"))
        if cut <= 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = max_chars - 1
        pieces.append(rest[: cut + 1].strip())
        rest = rest[cut + 1 :].strip()
    if rest:
        pieces.append(rest)
    return pieces


def segment(text: str, max_chars: int, pack: bool) -> list[str]:
    """Segments to synthesise in order: sentences, none longer than `max_chars`.

    With `pack`, consecutive sentences are joined while the result stays within `max_chars` (fewer,
    longer generations); without, each sentence is its own segment (earliest first audio).
    """
    pieces = [piece for sentence in split_sentences(text) for piece in _cut(sentence, max_chars)]
    if not pack:
        return pieces
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + 1 + len(piece) <= max_chars:
            packed[-1] = f"{packed[-1]} {piece}"
        else:
            packed.append(piece)
    return packed
