"""The speech service and its parts: prepare, admission, jobs, joiner, service."""

from voxport.speech.service import SpeechResult, SpeechService, SpeechStream
from voxport.speech.tickets import RequestTicket

__all__ = ["RequestTicket", "SpeechResult", "SpeechService", "SpeechStream"]
