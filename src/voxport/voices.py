"""Voices. Until the registry lands, every built-in name is a VoxCPM2 voice-design description."""

from __future__ import annotations

# OpenAI's voice names, each given a distinct designed voice. VoxCPM2 reads a parenthesised
# description at the start of the text as a voice design.
BUILTIN_DESIGNS: dict[str, str] = {
    "alloy": "a neutral, clear adult voice with an even, friendly tone",
    "ash": "a low, slightly husky adult male voice, calm and deliberate",
    "ballad": "a soft, melodic male voice with a gentle storytelling cadence",
    "coral": "a bright, warm adult female voice, upbeat and welcoming",
    "echo": "a smooth, resonant male voice with a measured pace",
    "fable": "an expressive, animated narrator with a light British accent",
    "nova": "a youthful, energetic female voice, crisp and articulate",
    "onyx": "a deep, authoritative male voice, rich and steady",
    "sage": "a calm, thoughtful female voice, soft-spoken and reassuring",
    "shimmer": "an airy, gentle female voice with a soothing quality",
    "verse": "a versatile, dynamic male voice with lively intonation",
    "marin": "a natural, conversational female voice, relaxed and clear",
    "cedar": "a natural, conversational male voice, warm and grounded",
}


def design_prefix(description: str | None, instructions: str | None) -> str:
    """The parenthesised voice-design prefix for a request, or '' when there is nothing to say.

    Brackets inside the parts are turned into square ones so that they cannot close the prefix early.
    """
    parts = [p.strip() for p in (description, instructions) if p and p.strip()]
    if not parts:
        return ""
    text = "; ".join(parts).replace("(", "[").replace(")", "]")
    return f"({text})"
