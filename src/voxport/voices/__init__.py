"""Voices: the catalogue (voices.json), the user library on disk and its consents, and the registry that
serves them."""

from voxport.voices.catalog import Voice, VoicesFileError, design_prefix, load_voices_file
from voxport.voices.registry import VoiceRegistry
from voxport.voices.uploads import Upload

__all__ = ["Upload", "Voice", "VoiceRegistry", "VoicesFileError", "design_prefix", "load_voices_file"]
