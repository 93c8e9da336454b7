"""One context's encoder: float32 audio at the engine's rate in, the context's format out, one stream for
the whole context (one header, no gaps between segments). pcm and wav are resampled with soxr; mp3, opus,
aac, mulaw and alaw are encoded on FFmpeg's libraries (voxport.codec). Work runs in a worker thread."""

from __future__ import annotations

import asyncio

import numpy as np
import soxr

from voxport.audio import FORMATS, in_process, to_s16le, wav_header
from voxport.errors import invalid

# What a context can be served in: formats encoded chunk by chunk in this process (flac's header needs
# the whole signal; its streamed form needs the ffmpeg binary).
SOCKET_FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "mulaw", "alaw")


def check_format(fmt: str) -> None:
    if fmt not in SOCKET_FORMATS or (FORMATS[fmt].muxer is not None and not in_process(fmt, 1.0)):
        raise invalid(
            f"response_format '{fmt}' cannot be streamed on the socket; use one of "
            f"{', '.join(SOCKET_FORMATS)}.",
            "response_format",
        )


class LiveEncoder:
    def __init__(self, fmt: str, in_rate: int, out_rate: int):
        self.fmt = fmt
        self._header = wav_header(out_rate, None) if fmt == "wav" else b""
        self._codec = None
        self._resampler = None
        if FORMATS[fmt].muxer is not None:
            from voxport.codec import StreamEncoder

            self._codec = StreamEncoder(fmt, in_rate, out_rate)
        elif out_rate != in_rate:
            self._resampler = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    async def encode(self, samples: np.ndarray) -> bytes:
        if not len(samples):
            return b""
        if self._codec is None:  # soxr on one chunk: well under a millisecond, no thread hop (as audio.py)
            return self._encode(samples)
        return await asyncio.to_thread(self._encode, samples)

    def _encode(self, samples: np.ndarray, last: bool = False) -> bytes:
        header, self._header = self._header, b""
        if self._codec is not None:
            return header + (self._codec.finish() if last else self._codec.encode(samples))
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        return header + (to_s16le(samples) if len(samples) else b"")

    async def finish(self) -> bytes:
        return await asyncio.to_thread(self._encode, np.zeros(0, dtype=np.float32), True)

    def close(self) -> None:
        if self._codec is not None:
            self._codec.close()
