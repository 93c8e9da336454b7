"""SSML input (`input_format: "ssml"`): a document turned into what voxport already does, before `prepare`.

`parse(text, language)` is the one entry point (speech requests, jobs, and any other front end that takes
SSML): it returns a `Script`, blocks of plain text in order, each with its voice (None: the request's),
its speed relative to the request's `speed`, and the silence that follows it. Blocks become segments;
`speech/script.py` turns a script into segments and spans. The subset (docs/api.md, "SSML"):

- `<speak>`, `<p>`, `<s>`: block (segment) boundaries;
- `<break time="500ms|1.5s" strength="…">`: that much silence after the text before it (a boundary);
- `<say-as interpret-as="…">`: the text rewritten by `speech/say_as.py`'s rules for the request's language;
- `<sub alias="…">`: the alias is read; `<phoneme ph="…">`: `ph` is read as a respelling when
  `alphabet="x-respell"` (VoxCPM2 reads text: IPA and X-SAMPA cannot be given to it, so with those
  alphabets the element's text is read and a warning says so);
- `<prosody rate="…">`: a speed for its blocks; `<voice name="…">`: a turn in that voice;
- `<emphasis>`, `<prosody pitch|volume>`, `<lang>`, `<mark>`: accepted, with no effect on the audio.

Any other element is stripped with its text kept, and named in the script's warnings. Parsing goes
through defusedxml with DTDs forbidden: an entity bomb or an external entity is refused at its DOCTYPE,
before anything is expanded or fetched. Offsets (`Block.start`, `Block.end`) count characters of the
document's text content (every text node in order: what `"".join(root.itertext())` gives).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from voxport.errors import invalid
from voxport.speech.say_as import say_as

MAX_BREAK_SECONDS = 10.0
MAX_DEPTH = 64
MIN_RATE, MAX_RATE = 0.25, 4.0
# <break strength>: seconds of silence (SSML 1.1 leaves them to the processor).
STRENGTHS = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.4, "strong": 0.7, "x-strong": 1.0}
RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
RESPELLING_ALPHABET = "x-respell"
_IGNORED = frozenset({"emphasis", "lang", "mark", "audio", "desc", "meta", "metadata", "lexicon"})
_WRAP = "<speak>"
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$")
_PUNCTUATION = re.compile(r"\s+([.,!?;:])")
_CJK = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")  # no space next to CJK text
_RATE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Block:
    """A run of text read in one voice at one speed, with the silence after it (seconds)."""

    text: str  # what the engine reads (say-as, sub and phoneme applied; whitespace collapsed)
    source: str  # the caller's text: the document's text content from `start` to `end`
    start: int
    end: int
    voice: str | None = None  # None: the request's voice
    rate: float = 1.0  # times the request's `speed`
    pause: float = 0.0


@dataclass(frozen=True)
class Script:
    blocks: tuple[Block, ...]
    content: str  # the document's text content, which offsets index
    warnings: tuple[str, ...] = ()


def _error(message: str) -> Exception:
    return invalid(f"Invalid SSML in 'input': {message}", "input", "invalid_ssml")


def _document(text: str) -> ET.Element:
    """The parsed document; a fragment without a <speak> root is read as if wrapped in one."""
    head = text.lstrip()
    wrapped = not head.startswith(("<speak", "<?xml", "<!DOCTYPE")) and not re.match(r"<\w+:speak", head)
    try:
        return fromstring(f"{_WRAP}{text}</speak>" if wrapped else text, forbid_dtd=True)
    except DefusedXmlException:
        raise _error("DTDs, entity declarations and external references are not accepted.") from None
    except ET.ParseError as exc:
        line, column = exc.position
        if wrapped and line == 1:
            column = max(0, column - len(_WRAP))
        reason = str(exc).split(":")[0]
        raise invalid(f"Malformed SSML in 'input' at line {line}, column {column + 1}: {reason}.",
                      "input", "invalid_ssml") from None  # fmt: skip


def _name(element: ET.Element) -> str:
    return str(element.tag).rsplit("}", 1)[-1]


def _seconds(element: ET.Element) -> float:
    time, strength = element.get("time"), element.get("strength")
    if time is not None:
        match = _TIME.match(time)
        if not match:
            raise _error(f"<break time='{time}'>: give milliseconds or seconds, as '500ms' or '1.5s'.")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        if seconds > MAX_BREAK_SECONDS:
            raise _error(f"<break time='{time}'> is longer than {MAX_BREAK_SECONDS:g}s.")
        return seconds
    if strength is not None and strength not in STRENGTHS:
        raise _error(f"<break strength='{strength}'>: use one of {', '.join(STRENGTHS)}.")
    return STRENGTHS[strength or "medium"]


def _rate(value: str, current: float) -> float:
    if value in RATES:
        rate = RATES[value]
    else:
        match = _RATE.match(value)
        if not match:
            raise _error(f"<prosody rate='{value}'>: use a percentage ('150%'), a factor or a keyword.")
        number, percent = float(match.group(1)), match.group(2)
        signed = value.strip()[0] in "+-"
        rate = (1 + number / 100 if signed else number / 100) if percent else number
    rate *= current
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _error(f"<prosody rate='{value}'> gives {rate:g}x; the rate must stay within 0.25x and 4x.")
    return rate


class _Builder:
    def __init__(self, language: str | None):
        self.language = language
        self.blocks: list[Block] = []
        self.warnings: list[str] = []
        self.content: list[str] = []
        self.position = 0
        self.spoken: list[str] = []  # the block being built
        self.source: list[tuple[int, str]] = []
        self.voice: str | None = None
        self.rate = 1.0

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def add(self, source: str | None, spoken: str | None = None, voice: str | None = None,
            rate: float = 1.0) -> None:  # fmt: skip
        """Text of the document (`source`), read as `spoken` (default: itself), in `voice` at `rate`."""
        if not source and not spoken:
            return
        if (voice, rate) != (self.voice, self.rate):
            self.boundary()
            self.voice, self.rate = voice, rate
        source = source or ""
        self.source.append((self.position, source))
        self.content.append(source)
        self.position += len(source)
        self.spoken.append(source if spoken is None else f" {spoken} ")

    def boundary(self, pause: float = 0.0) -> None:
        """Ends the block being built (if it has text), then adds `pause` after the last block."""
        text = " ".join("".join(self.spoken).split())
        text = _CJK_SPACE.sub("", _PUNCTUATION.sub(r"\1", text))
        pieces = [(p, s) for p, s in self.source if s.strip()]
        if text:
            if pieces:
                start = pieces[0][0] + len(pieces[0][1]) - len(pieces[0][1].lstrip())
                end = pieces[-1][0] + len(pieces[-1][1].rstrip())
            else:  # only substituted text (a <sub> of an empty element)
                start = end = self.source[0][0]
            source = "".join(self.content)[start:end]
            self.blocks.append(Block(text, source, start, end, self.voice, self.rate))
        self.spoken, self.source = [], []
        if pause:
            if self.blocks:
                self.blocks[-1] = replace(self.blocks[-1], pause=self.blocks[-1].pause + pause)
            else:
                self.warn("a <break> before any text has no effect")

    def walk(self, element: ET.Element, voice: str | None, rate: float, depth: int = 0) -> None:
        """The element's own content; its tail belongs to its parent (added there)."""
        if depth > MAX_DEPTH:
            raise _error(f"elements are nested more than {MAX_DEPTH} deep.")
        name = _name(element)
        if name in ("say-as", "sub", "phoneme"):
            text = "".join(element.itertext())
            return self.add(text, self._spoken(element, name, text), voice, rate)
        if name in ("p", "s"):
            self.boundary()
        elif name == "break":
            return self.boundary(_seconds(element))
        elif name == "voice":
            voice = element.get("name") or voice
            if element.get("name") is None:
                self.warn("<voice> without 'name' has no effect")
        elif name == "prosody" and element.get("rate") is not None:
            rate = _rate(element.get("rate", ""), rate)
        elif name not in ("speak", "prosody") and name not in _IGNORED:
            self.warn(f"unknown element <{name}> stripped, its text kept")
        self.add(element.text, voice=voice, rate=rate)
        for child in element:
            self.walk(child, voice, rate, depth + 1)
            self.add(child.tail, voice=voice, rate=rate)
        if name in ("p", "s"):
            self.boundary()

    def _spoken(self, element: ET.Element, name: str, text: str) -> str | None:
        """What a say-as, sub or phoneme element is read as (None: its own text)."""
        if name == "sub":
            return element.get("alias", text)
        if name == "say-as":
            kind = element.get("interpret-as", "")
            spoken = say_as(text, kind, element.get("format"), self.language)
            if spoken is None:
                self.warn(f"<say-as interpret-as='{kind}'> is not supported: its text is read as it is")
            return spoken
        alphabet = element.get("alphabet", "")
        if alphabet == RESPELLING_ALPHABET and element.get("ph", "").strip():
            return element.get("ph")
        self.warn(f"<phoneme alphabet='{alphabet}'>: VoxCPM2 reads text, not phonemes (use alphabet "
                  f"'{RESPELLING_ALPHABET}' with a respelling), so its text is read as it is")  # fmt: skip
        return None


def parse(text: str, language: str | None = None) -> Script:
    """An SSML document (or a fragment without <speak>) as a script; an `invalid` error naming `input`
    when it is malformed, declares a DTD or entities, or asks for what cannot be done."""
    root = _document(text)
    if _name(root) != "speak":
        raise _error(f"the root element must be <speak>, not <{_name(root)}>.")
    builder = _Builder(language)
    builder.walk(root, None, 1.0)
    builder.boundary()
    if not builder.blocks:
        raise _error("the document has no text to speak.")
    return Script(tuple(builder.blocks), "".join(builder.content), tuple(builder.warnings))


def fragments(text: str, language: str | None = None) -> list[str]:
    """The document cut into one standalone document per block (with its voice, rate and pause), each read
    as the whole would read that block: a job's segments."""
    out = []
    for block in parse(text, language).blocks:
        body = escape(block.text)
        if block.rate != 1.0:
            body = f'<prosody rate="{block.rate * 100:.6g}%">{body}</prosody>'
        if block.voice is not None:
            body = f"<voice name={quoteattr(block.voice)}>{body}</voice>"
        pause = f'<break time="{block.pause * 1000:.6g}ms"/>' if block.pause else ""
        out.append(f"<speak>{body}{pause}</speak>")
    return out
