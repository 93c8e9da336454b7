"""The lexicon's matching rules (whole word, case-aware, one pass) and its file checks. Through the server:
tests/test_shaping.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxport.lexicon import Lexicon, LexiconError


def _lexicon(entries: dict[str, str]) -> Lexicon:
    lexicon = Lexicon()
    lexicon.use(entries)
    return lexicon


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a gif, a GIF, a Gif.", "a jif, a jif, a Jif."),  # lower-case key: any casing
        ("Gif first.", "Jif first."),  # a capitalised word keeps its capital
        ("The US and us.", "The you ess and us."),  # a capitalised key: that casing only
        ("gifs, gif_2, 2gif, agif", "gifs, gif_2, 2gif, agif"),  # whole words only
        ("I love New York and new york.", "I love Noo York and noo york."),  # phrases; exact case first
        ("nginx", "engine x"),
        ("Go to ngINX", "Go to engine x"),  # mixed case: a lower-case key's respelling as written
    ],
)
def test_matching(text: str, expected: str) -> None:
    lexicon = _lexicon({"gif": "jif", "US": "you ess", "new york": "noo york", "New York": "Noo York",
                        "nginx": "engine x"})  # fmt: skip
    assert lexicon.apply(text)[0] == expected


def test_one_pass_longest_first_and_the_entries_used() -> None:
    lexicon = _lexicon({"a": "b", "b": "c", "a b": "x"})
    assert lexicon.apply("a b a") == ("x b", [["a", "b"], ["a b", "x"]])
    assert lexicon.apply("nothing here") == ("nothing here", [])


def test_request_entries_win_over_the_servers() -> None:
    lexicon = _lexicon({"sql": "sequel"})
    assert lexicon.apply("SQL", {"sql": "ess queue ell"}) == ("ess queue ell", [["sql", "ess queue ell"]])
    assert lexicon.apply("SQL") == ("sequel", [["sql", "sequel"]])


@pytest.mark.parametrize(
    "content",
    [
        "{broken",
        "[]",
        '{"a": 1}',
        '{"a": ""}',
        '{" a": "b"}',
        json.dumps({"a" * 101: "b"}),
        '{"a": "b\\u0007"}',
    ],  # fmt: skip
)
def test_a_bad_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "lexicon.json"
    path.write_text(content)
    with pytest.raises(LexiconError, match="lexicon.json"):
        Lexicon(path).read()


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LexiconError):
        Lexicon(tmp_path / "nope.json").read()
