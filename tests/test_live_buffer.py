"""The speech socket's text buffer: text split anywhere across messages gives the same segments as the same
text in one message (voxport.text's sentence rules, clauses for long sentences), each at the same place in
the context's text."""

from __future__ import annotations

import random

import pytest

from voxport.agents.buffer import Piece, TextBuffer

TEXTS = [
    ("Hello there, my friend. How are you today? I hope well.", None),
    (
        'Mr. Smith said "Wait..." and left.) Then Dr. J. R. Jones arrived!! '
        "Pi is 3.14, see example.com/a.b now.",
        None,
    ),
    ("One line\nanother line\n\nand a third; with a semicolon; done", None),
    ("a very long sentence without any full stop, going on and on, " * 6 + "until it ends.", None),
    ("no punctuation at all just words and words and more words " * 5, None),
    ("你好。今天天气很好！我们去公园吧？好的", "zh"),
]


def _segments(pieces: list[str], language: str | None, clause: int = 60) -> list[Piece]:
    buffer = TextBuffer(language, clause)
    out: list[Piece] = []
    for piece in pieces:
        out += buffer.add(piece)
    return out + buffer.drain()


@pytest.mark.parametrize("text,language", TEXTS)
def test_any_split_gives_the_segments_of_the_whole(text: str, language: str | None) -> None:
    whole = _segments([text], language)
    assert "".join(p.text for p in whole).replace(" ", "") == "".join(text.split())  # nothing lost or added
    assert all(text[p.start : p.end] == p.text for p in whole)  # the offsets slice the text sent
    rng = random.Random(text)
    splits = [[text[i : i + 1] for i in range(len(text))]]  # character by character
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
        splits.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    for pieces in splits:
        assert _segments(pieces, language) == whole, pieces  # the same texts at the same offsets


def test_sentences_leave_as_soon_as_the_next_character_confirms_them() -> None:
    buffer = TextBuffer(None, 150)
    assert buffer.add("Hello there.") == []  # a second dot or a closing quote could still follow
    assert buffer.add(" Next") == [Piece("Hello there.", 0, 12)]
    assert buffer.add(" sentence") == []
    assert buffer.drain() == [Piece("Next sentence", 13, 26)]


def test_a_long_sentence_leaves_clause_by_clause() -> None:
    buffer = TextBuffer(None, 40)
    out = buffer.add(
        "This sentence has a first clause, and then a second clause, and a third one that goes on"
    )
    assert out[0].text == "This sentence has a first clause,"
    assert all(len(piece.text) <= 40 for piece in out)
