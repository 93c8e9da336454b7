"""The speech service and its parts: prepare, admission, jobs, joiner, service."""

from voxport.speech.jobs import SpeechJob
from voxport.speech.service import SpeechResult, SpeechService, SpeechStream

__all__ = ["SpeechJob", "SpeechResult", "SpeechService", "SpeechStream"]
