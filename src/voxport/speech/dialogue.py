"""Dialogue: several voices in one piece of audio, turn by turn, with a pause between turns.

`dialogue: [{voice, input, instructions?}, ...]` replaces `input`. Every turn's voice is looked up before
anything else happens (an `invalid` error naming `dialogue[N].voice`), the length limit counts every
turn's text, and each turn is segmented as `input` would be. The pause is silence added after each turn
but the last (`dialogue_gap`, else the `dialogue_gap_s` setting); it is part of the audio, not of any
turn's timing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voxport.engine.base import SynthesisRequest
from voxport.errors import invalid
from voxport.protocol import SpeechCreateParams
from voxport.speech.timings import Span
from voxport.voices import Voice, VoiceRegistry, design_prefix

if TYPE_CHECKING:
    from voxport.speech.prepare import Preparer, SpeechPlan


def text_length(params: SpeechCreateParams, max_chars: int, upload: bool) -> int:
    """Checks what pydantic cannot (exactly one of `input` and `dialogue`, text to speak, the length
    limit over the whole dialogue) and returns the characters to speak."""
    if params.dialogue is None:
        if params.input is None:
            raise invalid("Missing required parameter: 'input' (or 'dialogue').", "input",
                          "missing_required_parameter")  # fmt: skip
        if not params.input.strip():
            raise invalid("'input' must contain text to speak.", "input")
        if len(params.input) > max_chars:
            raise invalid(f"'input' is {len(params.input)} characters; the maximum is {max_chars}.",
                          "input", "string_too_long")  # fmt: skip
        return len(params.input)
    if params.input is not None:
        raise invalid("Send either 'input' or 'dialogue', not both.", "dialogue")
    if upload:
        raise invalid("A recording to clone applies to 'input' only; a dialogue's voices are named.",
                      "dialogue")  # fmt: skip
    for index, turn in enumerate(params.dialogue):
        if not turn.input.strip():
            param = f"dialogue[{index}].input"
            raise invalid(f"'{param}' must contain text to speak.", param)
    chars = sum(len(turn.input) for turn in params.dialogue)
    if chars > max_chars:
        raise invalid(f"The dialogue is {chars} characters in all; the maximum is {max_chars}.",
                      "dialogue", "string_too_long")  # fmt: skip
    return chars


def voices(registry: VoiceRegistry, params: SpeechCreateParams, tenant: str = "") -> list[Voice]:
    """Every turn's voice (those `tenant` may use), looked up up front: the first unknown one is an
    `invalid` error naming its turn."""
    assert params.dialogue is not None
    found = []
    for index, turn in enumerate(params.dialogue):
        voice = registry.get(turn.voice, tenant)
        if voice is None:
            message = f"Unknown voice '{turn.voice}' in dialogue turn {index}."
            raise invalid(f"{message} See GET /v1/audio/voices for the voices available.",
                          f"dialogue[{index}].voice", "voice_not_found")  # fmt: skip
        found.append(voice)
    return found


def cache_input(params: SpeechCreateParams, turns: list[Voice], gap: float) -> dict[str, Any]:
    """The dialogue's part of the cache key: each turn's voice (by content), text and style, and the gap."""
    assert params.dialogue is not None
    pairs = zip(turns, params.dialogue, strict=True)
    return {"turns": [[voice.key, turn.input, turn.instructions] for voice, turn in pairs], "gap": gap}


async def complete(
    preparer: Preparer, plan: SpeechPlan
) -> tuple[tuple[SynthesisRequest, ...], tuple[Span, ...]]:
    """Each turn's prompt and segments, in order; the pause follows each turn's last segment but the
    last turn's. A turn's seed is the request's, else its voice's own (a designed voice's)."""
    params = plan.params
    assert params.dialogue is not None
    gap = round(plan.gap * preparer.engine.info.sample_rate)
    by_sentence = plan.stream or plan.timestamps
    segments: list[SynthesisRequest] = []
    spans: list[Span] = []
    last = len(params.dialogue) - 1
    for index, (turn, named) in enumerate(zip(params.dialogue, plan.turns, strict=True)):
        voice = await preparer._prompt(named)
        prefix = design_prefix(None, turn.instructions or params.instructions)
        texts = preparer._segments(
            turn.input, prefix, plan.max_length, by_sentence, voice.prompt.positions, params.language
        )
        seed = params.seed if params.seed is not None else voice.seed
        for n, text in enumerate(texts):
            segments.append(preparer.request(plan, prefix + text, voice.prompt, seed))
            pad = gap if n == len(texts) - 1 and index < last else 0
            spans.append(Span(text, turn=index, voice=turn.voice, pad=pad))
    return tuple(segments), tuple(spans)
