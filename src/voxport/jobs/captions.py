"""A finished job's captions: one cue per synthesised segment (sentences packed up to the segment cap),
timed where that segment sits in the job's audio. WebVTT is written by webvtt-py and SubRip by srt; the
text is prepared for each (the cue separator `-->` cannot appear in a cue, and WebVTT text escapes `&`
and `<`, which webvtt-py leaves to its caller)."""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence

import srt
from webvtt import Caption, WebVTT

CONTENT_TYPES = {"vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip; charset=utf-8"}


def _plain(text: str) -> str:
    return " ".join(text.replace("-->", "→").split())  # one line: a blank line would end the cue


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def write(fmt: str, texts: Sequence[str], timings: Sequence[Sequence[float]]) -> str:
    """Captions in `fmt` (vtt or srt) for segment `texts` at `timings` ([start, end] seconds each)."""
    cues = [(_plain(text), start, end) for text, (start, end) in zip(texts, timings, strict=True)]
    if fmt == "srt":
        return srt.compose(
            srt.Subtitle(index, datetime.timedelta(seconds=start), datetime.timedelta(seconds=end), text)
            for index, (text, start, end) in enumerate(cues, 1)
        )
    vtt = WebVTT()
    for text, start, end in cues:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        vtt.captions.append(Caption(_vtt_time(start), _vtt_time(end), escaped))
    out = io.StringIO()
    vtt.write(out)
    return out.getvalue() + "\n"
