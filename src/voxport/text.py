"""Text shaping before synthesis: per-language normalisation and sentence segmentation for long input.

Boundaries: `. ! ? ;` followed by whitespace, the CJK marks `。！？；` anywhere, and line breaks. Not a
boundary: a dot inside a number (3.14) or a URL or file name (example.com/a.b), since no whitespace
follows; a dot after a known abbreviation (Mr., e.g., etc.) or a single-letter initial (J. R. R.).
Closing quotes and brackets stay with their sentence. A sentence longer than `max_chars` is cut at its
last comma, then its last space, before the cap, else hard at the cap (run-on text without either).

A request's `language` (ISO 639-1) selects `LanguageRules`: more sentence marks (Devanagari, Burmese,
Khmer, Arabic) and, for Chinese and Japanese, no space between packed sentences, `!` and `?` ending a
sentence with no space after them, and line breaks inside running CJK text joined (a hard-wrapped
paragraph is one sentence, not one per line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
# The word before a dot, matched on the reversed text from the dot backwards: linear in the word, and the
# words before successive boundaries are disjoint (whitespace follows each), so a whole pass is linear.
# A word longer than this cannot be an abbreviation, so no more of it is read.
_LONGEST_WORD = 16
_WORD_REVERSED = re.compile(r"[\w.]+")
_CJK_WRAP = re.compile(rf"(?<=[{_CJK}])[ \t]*\n[ \t\n]*(?=[{_CJK}])")


@dataclass(frozen=True)
class LanguageRules:
    """How one language's text is cut into sentences and put back together."""

    marks: str = "。！？；"  # end a sentence wherever they stand
    spaced: str = ".!?;"  # end a sentence when whitespace follows
    joiner: str = " "  # between sentences packed into one segment
    abbreviations: frozenset[str] = ABBREVIATIONS
    join_wrapped_cjk: bool = False

    def __post_init__(self) -> None:
        closers = "[" + re.escape(_CLOSERS) + "]*"
        # A mark that ends a sentence wherever it stands is not also one that needs whitespace after it.
        only_spaced = re.escape("".join(ch for ch in self.spaced if ch not in self.marks))
        # Possessive, and only from the start of a run of marks: a long run of dots with no whitespace
        # after it is read once, not once from each of its positions (which would be quadratic).
        spaced = f"(?<![{only_spaced}])([{only_spaced}]++{closers}+)(?=\\s)"
        marks = f"([{re.escape(self.marks)}][{re.escape(self.marks + self.spaced)}]*+{closers})"
        object.__setattr__(self, "_end", re.compile(f"{spaced}|{marks}|(\\n+)"))


DEFAULT_RULES = LanguageRules()
_CJK_RULES = LanguageRules(marks="。！？；．!?！？", joiner="", join_wrapped_cjk=True)
RULES: dict[str | None, LanguageRules] = {
    None: DEFAULT_RULES,
    "en": DEFAULT_RULES,
    "zh": _CJK_RULES,
    "ja": _CJK_RULES,
    "hi": LanguageRules(marks="。！？；।॥"),
    "my": LanguageRules(marks="。！？；။"),
    "km": LanguageRules(marks="。！？；។៕"),
    "ar": LanguageRules(spaced=".!?;؟۔"),
}


def rules_for(language: str | None) -> LanguageRules:
    """The rules of `language`; a language without rules of its own has the default ones."""
    return RULES.get(language, DEFAULT_RULES)


def normalize(text: str, language: str | None = None) -> str:
    """The language's text normalisation (before segmentation): hard-wrapped CJK lines joined."""
    if rules_for(language).join_wrapped_cjk:
        text = _CJK_WRAP.sub("", text)
    return text


def _is_abbreviation(reversed_text: str, start: int, end: int, abbreviations: frozenset[str]) -> bool:
    """Whether the word ending at `end` (and starting at `start` or later) is an abbreviation or an
    initial; `reversed_text` is the text reversed."""
    n = len(reversed_text)
    match = _WORD_REVERSED.match(reversed_text, n - end, min(n - start, n - end + _LONGEST_WORD + 1))
    if not match:
        return False
    word = match.group(0)[::-1].lower().rstrip(".")
    return word in abbreviations or (len(word) == 1 and word.isalpha())


def split_sentences(text: str, language: str | None = None) -> list[str]:
    """Split `text` into sentences, stripped, none empty."""
    rules = rules_for(language)
    sentences: list[str] = []
    start = 0
    reversed_text = text[::-1]
    for match in rules._end.finditer(text):  # type: ignore[attr-defined]
        end = match.end()
        western = match.group(1)
        single_dot = western is not None and western.rstrip(_CLOSERS) == "."
        if single_dot and _is_abbreviation(reversed_text, start, match.start(), rules.abbreviations):
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
    """`sentence` in pieces of at most `max_chars`; positions, not copies of the rest, so linear."""
    pieces: list[str] = []
    pos, n = 0, len(sentence)
    while n - pos > max_chars:
        stop = pos + max_chars + 1
        cut = max(
            sentence.rfind(",", pos, stop), sentence.rfind("，", pos, stop), sentence.rfind("、", pos, stop)
        )
        if cut <= pos:
            cut = sentence.rfind(" ", pos, stop)
        if cut <= pos:
            cut = pos + max_chars - 1
        pieces.append(sentence[pos : cut + 1].strip())
        pos = cut + 1
        while pos < n and sentence[pos].isspace():
            pos += 1
    if pos < n:
        pieces.append(sentence[pos:])
    return pieces


def segment(text: str, max_chars: int, pack: bool, language: str | None = None) -> list[str]:
    """Segments to synthesise in order: sentences, none longer than `max_chars`.

    With `pack`, consecutive sentences are joined while the result stays within `max_chars` (fewer,
    longer generations); without, each sentence is its own segment (earliest first audio).
    """
    sentences = split_sentences(text, language)
    pieces = [piece for sentence in sentences for piece in _cut(sentence, max_chars)]
    if not pack:
        return pieces
    joiner = rules_for(language).joiner
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + len(joiner) + len(piece) <= max_chars:
            packed[-1] = f"{packed[-1]}{joiner}{piece}"
        else:
            packed.append(piece)
    return packed


def sentence_end(text: str, language: str | None = None, final: bool = False) -> int | None:
    """Where the first sentence of `text` ends (an index into it), by the same rules as `split_sentences`;
    None while no sentence is known to be complete. Without `final`, a boundary counts only once a
    character follows it (more text could still extend it: a second dot, a closing quote, another line
    break), so that text arriving in pieces, split anywhere, is cut where the whole text would be."""
    rules = rules_for(language)
    reversed_text = text[::-1]
    for match in rules._end.finditer(text):  # type: ignore[attr-defined]
        western = match.group(1)
        single_dot = western is not None and western.rstrip(_CLOSERS) == "."
        if single_dot and _is_abbreviation(reversed_text, 0, match.start(), rules.abbreviations):
            continue
        return match.end() if final or match.end() < len(text) else None
    return None


def clause_end(text: str, max_chars: int) -> int:
    """Where the first clause of a sentence longer than `max_chars` ends: after its last comma within
    the cap, else its last space, else at the cap (as `segment` cuts long sentences)."""
    window = text[: max_chars + 1]
    cut = max(window.rfind(","), window.rfind("，"), window.rfind("、"))
    if cut <= 0:
        cut = window.rfind(" ")
    if cut <= 0:
        cut = max_chars - 1
    return cut + 1
