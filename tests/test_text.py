"""Sentence segmentation rules for long input."""

from __future__ import annotations

import pytest

from voxport.text import normalize, segment, split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four; five", ["One.", "Two!", "Three?", "Four;", "five"]),
        ("Pi is 3.14159. Next.", ["Pi is 3.14159.", "Next."]),
        ("See https://example.com/a.b?x=1. Done.", ["See https://example.com/a.b?x=1.", "Done."]),
        (
            "Mr. Smith met Dr. Jones, e.g. at 5 p.m. today. Fine.",
            ["Mr. Smith met Dr. Jones, e.g. at 5 p.m. today.", "Fine."],
        ),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Wait... what? Really!!", ["Wait...", "what?", "Really!!"]),
        ("First line\nSecond line\n\nThird", ["First line", "Second line", "Third"]),
        ("你好。世界！这是测试；好吗？", ["你好。", "世界！", "这是测试；", "好吗？"]),
        ("  ", []),
        ("No ending", ["No ending"]),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_run_on_text_is_cut_at_commas_then_spaces_then_hard() -> None:
    commas = "alpha beta, gamma delta, epsilon zeta, eta theta"
    assert segment(commas, 20, pack=False) == ["alpha beta,", "gamma delta,", "epsilon zeta,", "eta theta"]
    words = "word " * 10
    assert all(len(p) <= 12 for p in segment(words, 12, pack=False))
    assert " ".join(segment(words, 12, pack=False)) == words.strip()
    cjk = "测" * 25
    assert segment(cjk, 10, pack=False) == ["测" * 10, "测" * 10, "测" * 5]


def test_packing_joins_sentences_up_to_the_cap() -> None:
    text = "One. Two. Three. Four."
    assert segment(text, 9, pack=True) == ["One. Two.", "Three.", "Four."]
    assert segment(text, 100, pack=True) == [text]
    assert segment(text, 100, pack=False) == ["One.", "Two.", "Three.", "Four."]


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("你好!世界?好。", None, ["你好!世界?好。"]),
        ("你好!世界?好。", "zh", ["你好!", "世界?", "好。"]),
        ("これは．テスト！", "ja", ["これは．", "テスト！"]),
        ("नमस्ते। आप कैसे हैं॥ ठीक", "hi", ["नमस्ते।", "आप कैसे हैं॥", "ठीक"]),
        ("မင်္ဂလာပါ။ နေကောင်းလား။", "my", ["မင်္ဂလာပါ။", "နေကောင်းလား။"]),
        ("សួស្តី។ សុខសប្បាយ៕", "km", ["សួស្តី។", "សុខសប្បាយ៕"]),
        ("كيف حالك؟ بخير.", "ar", ["كيف حالك؟", "بخير."]),
        ("Dr. Müller kam. Gut.", "de", ["Dr. Müller kam.", "Gut."]),
        ("नमस्ते। आप", "fr", ["नमस्ते। आप"]),
    ],
)
def test_language_rules(text: str, language: str | None, expected: list[str]) -> None:
    assert split_sentences(text, language) == expected


def test_cjk_is_packed_without_spaces_and_wrapped_lines_are_joined() -> None:
    assert segment("一。二。三。", 300, pack=True, language="zh") == ["一。二。三。"]
    assert segment("One. Two.", 300, pack=True, language="fr") == ["One. Two."]
    assert normalize("今天天气\n  很好。\nOK\n明天", "zh") == "今天天气很好。\nOK\n明天"
    assert normalize("今天天气\n很好。", "en") == "今天天气\n很好。"
