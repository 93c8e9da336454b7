"""Seconds of audio in a response body, for the formats whose length the bench can read cheaply.

pcm and wav are counted from their size. mp3 is counted by walking its frame headers (each frame holds a
fixed number of samples), Ogg Opus from its last page's granule position less the stream's pre-skip. Other
compressed formats: None (the figure is then n/a).
"""

from __future__ import annotations

import struct

WAV_HEADER_BYTES = 44
_OPUS_RATE = 48_000  # Ogg Opus granule positions count 48 kHz samples whatever the coded rate
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_KBPS = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _mp3_seconds(body: bytes) -> float | None:
    pos = 0
    if body[:3] == b"ID3" and len(body) >= 10:  # ID3v2 tag: a synchsafe size after a 10-byte header
        size = body[6] << 21 | body[7] << 14 | body[8] << 7 | body[9]
        pos = 10 + size
    seconds = 0.0
    frames = 0
    while pos + 4 <= len(body):
        (header,) = struct.unpack_from(">I", body, pos)
        version, layer = header >> 19 & 3, header >> 17 & 3
        kbps_index, rate_index, padding = header >> 12 & 15, header >> 10 & 3, header >> 9 & 1
        if header >> 21 != 0x7FF or version == 1 or layer != 1 or rate_index == 3 or kbps_index in (0, 15):
            break  # not a Layer III frame header: the end of the audio (or a trailing tag)
        rate = _MP3_RATES[version][rate_index]
        kbps = _MP3_KBPS[3 if version == 3 else 2][kbps_index]
        samples = 1152 if version == 3 else 576
        pos += samples // 8 * kbps * 1000 // rate + padding
        seconds += samples / rate
        frames += 1
    return seconds if frames else None


def _opus_seconds(body: bytes) -> float | None:
    head = body.find(b"OpusHead")
    last = body.rfind(b"OggS")
    if head < 0 or last < 0 or last + 14 > len(body) or head + 12 > len(body):
        return None
    (pre_skip,) = struct.unpack_from("<H", body, head + 10)
    (granule,) = struct.unpack_from("<q", body, last + 6)
    return max(0, granule - pre_skip) / _OPUS_RATE


def audio_seconds(fmt: str, body: bytes | None, nbytes: int, rate: int) -> float | None:
    """Seconds of audio in a body of `nbytes` (`body` itself is needed for mp3 and opus only)."""
    if fmt == "pcm":
        return nbytes / 2 / rate
    if fmt == "wav":
        return max(0, nbytes - WAV_HEADER_BYTES) / 2 / rate
    if fmt == "mp3" and body:
        return _mp3_seconds(body)
    if fmt == "opus" and body:
        return _opus_seconds(body)
    return None


def keeps_body(fmt: str) -> bool:
    """Whether the body must be kept to count its audio."""
    return fmt in ("mp3", "opus")
