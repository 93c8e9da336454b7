"""Segment timings: where each synthesised segment starts and ends in the delivered audio.

Positions are counted in engine-rate samples of the joined signal, as the joiner builds it: each segment
already at the request's speed (voxport.tempo stretches segments one by one, which is what makes this
exact: atempo over the whole signal moves content tens of milliseconds off `t / speed`), then
cross-faded. A segment starts where its first sample lands after the cross-fade (`CrossFader.starts`) and
ends after its own samples, or where the next one begins to fade in; silence added after a dialogue turn
is not part of the turn. Seconds are `samples / engine rate`: resampling keeps time (checked against the
decoded audio in tests/test_timings.py). The granularity is the segment (a sentence, or a piece of a long
one): word timings would need a forced aligner, which is not run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Span:
    """What a segment is, for its timing: its text (without any style prefix), its dialogue turn and
    voice, the silence (engine samples) that follows it (a dialogue's gap between turns, an SSML break),
    its speed relative to the request's (SSML `<prosody rate>`), and the caller's own text for it with its
    offsets (into `input`, or into an SSML document's text content) where they are known."""

    text: str
    turn: int | None = None
    voice: str | None = None
    pad: int = 0
    speed: float = 1.0
    input_text: str | None = None
    origin: tuple[int, int] | None = None

    def caller(self) -> dict[str, Any]:
        """The caller's text and offsets, as timings carry them (only when known)."""
        if self.origin is None:
            return {}
        return {"input_text": self.input_text, "input_start": self.origin[0], "input_end": self.origin[1]}


class Timeline:
    """Filled in by the joiner as segments are generated; read for the JSON body, the cache entry and
    the stream's `speech.audio.segment` events."""

    def __init__(self, spans: Sequence[Span], rate: int):
        self.spans = tuple(spans)
        self.rate = rate  # of the joined signal, which is already at the request's speed
        self.starts: dict[int, int] = {}
        self.lengths: dict[int, int] = {}
        self.finished: set[int] = set()
        self.announced = 0
        self._fixed: list[dict[str, Any]] | None = None

    @classmethod
    def fixed(cls, segments: Sequence[dict[str, Any]]) -> Timeline:
        """A timeline known in full already (a cache hit)."""
        timeline = cls((), 1)
        timeline._fixed = [dict(s) for s in segments]
        return timeline

    # -- written by the joiner -----------------------------------------------------------------------

    def begin(self, index: int, position: int) -> None:
        self.starts.setdefault(index, position)
        self.lengths.setdefault(index, 0)

    def grew(self, index: int, samples: int) -> None:
        self.lengths[index] = self.lengths.get(index, 0) + samples

    def finish(self, index: int) -> None:
        self.finished.add(index)

    def add(self, index: int, start: int, samples: int) -> None:
        """A whole segment at once (a job's, from its segment file)."""
        self.begin(index, start)
        self.grew(index, samples)
        self.finish(index)

    # -- read -------------------------------------------------------------------------------------------

    def _seconds(self, samples: int) -> float:
        return round(samples / self.rate, 3)

    def segment(self, index: int) -> dict[str, Any]:
        span = self.spans[index]
        start = self.starts.get(index)
        if start is None:  # it produced no audio: it sits where the previous one ended
            before = self.segment(index - 1) if index else None
            start_s = before["end"] if before and before["end"] is not None else 0.0
            return {"index": index, "text": span.text, "start": start_s, "end": start_s,
                    "turn": span.turn, "voice": span.voice, "words": None, **span.caller()}  # fmt: skip
        end = start + self.lengths[index]
        if index + 1 in self.starts:  # the cross-fade: it ends where the next one begins to fade in
            end = min(end, self.starts[index + 1])
        end = self._seconds(end) if index in self.finished else None
        return {"index": index, "text": span.text, "start": self._seconds(start), "end": end,
                "turn": span.turn, "voice": span.voice, "words": None, **span.caller()}  # fmt: skip

    def segments(self) -> list[dict[str, Any]]:
        if self._fixed is not None:
            return [dict(s) for s in self._fixed]
        return [self.segment(i) for i in range(len(self.spans))]

    def pending(self, final: bool = False) -> list[dict[str, Any]]:
        """Segments not yet announced whose audio has begun (all of them once `final`), in order."""
        if self._fixed is not None:
            ready = len(self._fixed)
            out = self._fixed[self.announced :]
        else:
            ready = len(self.spans) if final else (max(self.starts) + 1 if self.starts else 0)
            out = [self.segment(i) for i in range(self.announced, ready)]
        self.announced = max(self.announced, ready)
        return out
