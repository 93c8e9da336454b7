"""`<say-as interpret-as="…">` rules: a piece of text rewritten as it should be read, per `language`.

English numbers are written out with inflect; Chinese (and Japanese, which reads the same digits as
kanji numerals here) through wetext's text normalisation, the libraries VoxCPM's own `normalize` uses.
For any other language the digits are kept (VoxCPM2 reads them in the language of the text around them);
what is language-independent (characters, digits and telephone numbers spaced out, dates reordered)
still applies. `say_as` returns None for an `interpret-as` it does not know.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")  # fmt: skip
_ZH_DIGITS = "零一二三四五六七八九"
_DATE_ORDERS = frozenset({"ymd", "mdy", "dmy", "ydm", "md", "dm", "ym", "my", "y", "m", "d"})
KINDS = ("characters", "spell-out", "cardinal", "number", "ordinal", "digits", "date", "time", "telephone")


@functools.cache
def _inflect() -> Any:
    import inflect

    return inflect.engine()


@functools.cache
def _wetext(language: str) -> Any:
    from wetext import Normalizer

    return Normalizer(lang=language, operator="tn")


def _cjk(language: str | None) -> bool:
    return language in ("zh", "ja")


def _number(value: str, language: str | None, ordinal: bool = False) -> str:
    digits = value.replace(",", "").strip()
    if not re.fullmatch(r"[+-]?\d+(\.\d+)?", digits):
        return value
    if language in (None, "en"):
        engine = _inflect()
        if ordinal and "." not in digits:
            return str(engine.number_to_words(engine.ordinal(int(digits)))).replace(",", "")
        words = str(engine.number_to_words(digits, andword="")).replace(",", "")
        return words.replace("-", " ") if digits.startswith("-") else words
    if _cjk(language):
        words = _wetext("zh").normalize(digits)
        return f"第{words}" if ordinal else words
    return digits


def _digit_words(text: str, language: str | None) -> str:
    out = []
    for char in text:
        if char.isdigit():
            if language in (None, "en"):
                out.append(str(_inflect().number_to_words(int(char))))
            elif _cjk(language):
                out.append(_ZH_DIGITS[int(char)])
            else:
                out.append(char)
        elif char.isalnum():
            out.append(char)
    return " ".join(out)


def _telephone(text: str, language: str | None) -> str:
    plus = "plus " if text.strip().startswith("+") and language in (None, "en") else ""
    groups = [g for g in re.split(r"[^\dA-Za-z]+", text) if g]
    separator = "" if _cjk(language) else ", "
    return plus + separator.join(_digit_words(g, language) for g in groups)


def _date(text: str, form: str | None, language: str | None) -> str | None:
    parts = [p for p in re.split(r"[-/.\s]+", text.strip()) if p]
    order = (form or "ymd").lower()
    if order not in _DATE_ORDERS or len(parts) != len(order) or not all(p.isdigit() for p in parts):
        return None
    found = dict(zip(order, (int(p) for p in parts), strict=True))
    year, month, day = found.get("y"), found.get("m"), found.get("d")
    if (month is not None and not 1 <= month <= 12) or (day is not None and not 1 <= day <= 31):
        return None
    if _cjk(language):
        pieces = []
        if year is not None:
            pieces.append("".join(_ZH_DIGITS[int(c)] for c in str(year)) + "年")
        if month is not None:
            pieces.append(_wetext("zh").normalize(str(month)) + "月")
        if day is not None:
            pieces.append(_wetext("zh").normalize(str(day)) + "日")
        return "".join(pieces)
    if language not in (None, "en"):
        return "-".join(str(v) for v in (year, month, day) if v is not None)
    words = []
    if month is not None:
        words.append(_MONTHS[month - 1])
    if day is not None:
        words.append(_number(str(day), language, ordinal=True))
    if year is not None:
        words.append(_year(year))
    return " ".join(words)


def _year(year: int) -> str:
    engine = _inflect()
    if 1100 <= year <= 1999 or 2010 <= year <= 2099:
        high, low = divmod(year, 100)
        tail = "hundred" if low == 0 else (f"oh {engine.number_to_words(low)}" if low < 10
                                            else engine.number_to_words(low))  # fmt: skip
        return f"{engine.number_to_words(high)} {tail}"
    return str(engine.number_to_words(year, andword=""))


def _time(text: str, language: str | None) -> str | None:
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm])?\s*", text)
    if not match:
        return None
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        return None
    if _cjk(language):
        words = _wetext("zh").normalize(str(hour)) + "点"
        return words + (_wetext("zh").normalize(str(minute)) + "分" if minute else "")
    if language not in (None, "en"):
        return text.strip()
    engine = _inflect()
    said = str(engine.number_to_words(hour))
    if minute == 0:
        said += " o'clock" if not match.group(4) else ""
    else:
        said += f" {'oh ' if minute < 10 else ''}{engine.number_to_words(minute)}"
    if match.group(4):
        said += " " + " ".join(match.group(4).upper())
    return said


def say_as(text: str, kind: str, form: str | None, language: str | None) -> str | None:
    """`text` as `<say-as interpret-as=kind format=form>` reads it in `language`; None: unknown kind."""
    if kind in ("characters", "spell-out"):
        return " ".join(c for c in text if not c.isspace())
    if kind in ("cardinal", "number"):
        return _number(text, language)
    if kind == "ordinal":
        return _number(text.rstrip("stndrhSTNDRH."), language, ordinal=True)
    if kind == "digits":
        return _digit_words(text, language)
    if kind == "telephone":
        return _telephone(text, language)
    if kind == "date":
        return _date(text, form, language) or text
    if kind == "time":
        return _time(text, language) or text
    return None
