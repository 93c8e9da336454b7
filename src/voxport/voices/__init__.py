"""Voices: the catalogue (voices.json), the user library on disk, and the registry that serves both."""

from voxport.voices.catalog import Voice, VoicesFileError, design_prefix, load_voices_file
from voxport.voices.registry import Upload, VoiceRegistry

__all__ = ["Upload", "Voice", "VoiceRegistry", "VoicesFileError", "design_prefix", "load_voices_file"]
