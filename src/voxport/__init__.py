"""voxport: an OpenAI-compatible text-to-speech server for VoxCPM2."""

__version__ = "0.1.0"
