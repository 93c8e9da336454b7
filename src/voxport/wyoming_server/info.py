"""The `describe` answer: one TTS program whose voices are the registry's, by name, as they are now."""

from __future__ import annotations

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

from voxport import __version__
from voxport.engine.base import LANGUAGES
from voxport.voices import Voice, VoiceRegistry

_ATTRIBUTION = Attribution(name="OpenBMB VoxCPM2, served by voxport", url="https://github.com/OpenBMB/VoxCPM")
_LANGUAGES = sorted(LANGUAGES)


def wyoming_name(voice: Voice) -> str:
    """The name a Wyoming client sees and sends back: a library voice's name, a built-in voice's id."""
    return voice.name or voice.id


def _description(voice: Voice) -> str:
    if voice.kind == "designed" and voice.description:
        return voice.description
    if voice.source == "user":
        return f"cloned voice ({voice.id})"
    return "cloned from a recording"


def _voice(name: str, description: str) -> TtsVoice:
    return TtsVoice(name=name, attribution=_ATTRIBUTION, installed=True, version=None,
                    description=description, languages=_LANGUAGES)  # fmt: skip


def describe(voices: VoiceRegistry) -> Info:
    """Built each time it is asked for, so that library and alias changes show without a restart."""
    listed: dict[str, TtsVoice] = {}
    for v in voices.all():  # a library voice named like a built-in one is reached by its id: not listed twice
        if voices.get(wyoming_name(v)) is v:
            listed[wyoming_name(v)] = _voice(wyoming_name(v), _description(v))
    for alias, (target, _) in voices.aliases.all().items():
        voice = voices.aliases.find(target)
        if voice is not None:  # an alias is one more name; one named like a voice stands in its place
            listed[alias] = _voice(alias, f"{wyoming_name(voice)}: {_description(voice)}")
    program = TtsProgram(
        name="voxport",
        attribution=_ATTRIBUTION,
        installed=True,
        description="VoxCPM2 speech: cloned and designed voices, streamed as generated",
        version=__version__,
        voices=list(listed.values()),
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])
