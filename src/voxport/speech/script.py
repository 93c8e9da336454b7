"""An SSML request's script (speech/ssml.py) as segments, the way `dialogue` turns are: every block's voice
looked up up front (an `invalid` error naming `input`), each block segmented as `input` would be, its
speed on its spans (the joiner stretches segment by segment), its pause as silence after its last
segment. And where each segment's text came from in the caller's text, for its timing."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from voxport.engine.base import SynthesisRequest
from voxport.errors import invalid
from voxport.protocol import SpeechCreateParams
from voxport.speech import ssml
from voxport.speech.timings import Span
from voxport.voices import Voice, VoiceRegistry, design_prefix

_TRIES = 64

if TYPE_CHECKING:
    from voxport.speech.prepare import Preparer, SpeechPlan


def parse(params: SpeechCreateParams) -> ssml.Script | None:
    """The request's script, or None for plain text. SSML applies to `input`, not to a dialogue."""
    if params.input_format != "ssml":
        return None
    if params.dialogue is not None or params.input is None:
        raise invalid("'input_format' 'ssml' applies to 'input'; a dialogue's turns are text.",
                      "input_format")  # fmt: skip
    return ssml.parse(params.input, params.language)


def voices(registry: VoiceRegistry, script: ssml.Script, tenant: str = "") -> tuple[Voice | None, ...]:
    """Each block's `<voice name>` among those `tenant` may use (None: the request's voice)."""
    found: list[Voice | None] = []
    for block in script.blocks:
        voice = registry.get(block.voice, tenant) if block.voice is not None else None
        if block.voice is not None and voice is None:
            message = f"Unknown voice '{block.voice}' in <voice name> of the SSML 'input'."
            raise invalid(f"{message} See GET /v1/audio/voices for the voices available.", "input",
                          "voice_not_found")  # fmt: skip
        found.append(voice)
    return tuple(found)


def cache_input(script: ssml.Script, voices: tuple[Voice | None, ...], default: str) -> dict[str, Any]:
    """The script's part of the cache key: each block's voice (by content), text, speed and pause."""
    pairs = zip(script.blocks, voices, strict=True)
    return {"ssml": [[v.key if v else default, b.text, b.rate, b.pause] for b, v in pairs]}


def _match(chars: list[str], text: str, i: int) -> int | None:
    """Where `chars` (no whitespace) end when read from `text[i]` on, skipping `text`'s whitespace."""
    j = 0
    while j < len(chars) and i < len(text):
        if text[i].isspace():
            i += 1
        elif text[i] == chars[j]:
            i, j = i + 1, j + 1
        else:
            return None
    return i if j == len(chars) else None


def locate(pieces: list[str], text: str) -> list[tuple[int, int] | None]:
    """Where each piece (in order; cut from `text` with whitespace stripped, changed or joined, as
    segmentation does) lies in `text`, or None for a piece that is not `text`'s own characters (respelled
    or rewritten); the next piece is then looked for further on (at most `_TRIES` places)."""
    found: list[tuple[int, int] | None] = []
    cursor = 0
    for piece in pieces:
        chars = [c for c in piece if not c.isspace()]
        place = None
        start = cursor
        for _ in range(_TRIES if chars else 0):
            while start < len(text) and text[start].isspace():
                start += 1
            end = _match(chars, text, start)
            if end is not None:
                place, cursor = (start, end), end
                break
            start = text.find(chars[0], start + 1)
            if start < 0:
                break
        found.append(place)
    return found


def spans(texts: list[str], source: str, offset: int = 0, **fields: Any) -> list[Span]:
    """Spans for a run of segments cut from `source` (at `offset` in the caller's text), each with the
    caller's text it came from: its own characters' place, or, for a rewritten one (respelled, say-as),
    what lies between its neighbours' places."""
    places = locate(texts, source)
    out = []
    for index, (text, place) in enumerate(zip(texts, places, strict=True)):
        if place is None:
            before = next((p[1] for p in reversed(places[:index]) if p), 0)
            after = next((p[0] for p in places[index + 1 :] if p), len(source))
            gap = source[before:after]
            place = (before + len(gap) - len(gap.lstrip()), before + len(gap.rstrip()))
        start, end = place
        origin = (start + offset, end + offset)
        out.append(Span(text, input_text=source[start:end], origin=origin, **fields))
    return out


async def complete(
    preparer: Preparer, plan: SpeechPlan
) -> tuple[tuple[SynthesisRequest, ...], tuple[Span, ...]]:
    """Each block's prompt and segments, in order; a block's pause follows its last segment."""
    params, script = plan.params, plan.script
    assert script is not None
    rate = preparer.engine.info.sample_rate
    prefix = design_prefix(None, params.instructions)
    by_sentence = plan.stream or plan.timestamps
    own = plan.voice if not isinstance(plan.voice, Voice) else await preparer._prompt(plan.voice)
    segments: list[SynthesisRequest] = []
    spanned: list[Span] = []
    for block, named in zip(script.blocks, plan.script_voices, strict=True):
        voice = own if named is None else await preparer._prompt(named)
        seed = plan.seed if named is None else params.seed if params.seed is not None else voice.seed
        texts = preparer._segments(
            block.text, prefix, plan.max_length, by_sentence, voice.prompt.positions, params.language
        )
        pad = round(block.pause * rate)
        for n, span in enumerate(
            spans(texts, block.source, block.start, voice=block.voice or params.voice_id, speed=block.rate)
        ):
            segments.append(preparer.request(plan, prefix + span.text, voice.prompt, seed))
            spanned.append(replace(span, pad=pad if n == len(texts) - 1 else 0))
    return tuple(segments), tuple(spanned)
