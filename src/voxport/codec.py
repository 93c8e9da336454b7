"""In-process encoders for the compressed formats, on FFmpeg's own libraries through PyAV.

A stream used to get its own ffmpeg process: at 256 streams that was 256 processes, each started (tens of
milliseconds of CPU), fed through a pipe and read back through another. Here an encoder is a codec and
muxer context in the server's process, fed one engine chunk at a time in a worker thread of a small
shared pool, and it returns the bytes that chunk completed. Same libraries, same codec settings (the
`FORMATS` table), so the files are what the ffmpeg command produced. The ffmpeg binary stays for what it
is the right tool for: speed changes (atempo) and decoding uploads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import os
import threading
from collections.abc import AsyncIterator

import av
import numpy as np

from voxport.audio import ENGINE_CHANNELS, FORMATS, AudioEncodingError

_MUXER_OPTIONS = {
    "mp3": {"write_xing": "0"},  # no seeking back to fill a Xing header: the body is streamed
    "ogg": {"page_duration": "20000"},  # µs: one Ogg page per 20 ms Opus packet, no waiting for more
}

# One pool for every stream's encoding, sized to the machine: encoding is CPU work (the codecs release
# the GIL), and a pool of its own keeps it from queueing behind file I/O in asyncio's default pool.
_POOL = concurrent.futures.ThreadPoolExecutor(
    max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="voxport-encode"
)


class _Sink(io.RawIOBase):
    """The muxer's output: bytes collected until the caller takes them."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _bitrate(text: str | None) -> int | None:
    return None if text is None else int(text.rstrip("k")) * 1000


class StreamEncoder:
    """One response's encoder: mono float32 chunks at `in_rate` in, `fmt` at `out_rate` out. A lock keeps
    its calls one at a time: a stream that is abandoned while a chunk is being encoded closes the
    encoder only once that chunk is done."""

    def __init__(self, fmt: str, in_rate: int, out_rate: int):
        spec = FORMATS[fmt]
        assert spec.muxer is not None and spec.codec is not None
        self._in_rate = in_rate
        self._sink = _Sink()
        options = {"flush_packets": "1", **_MUXER_OPTIONS.get(spec.muxer, {})}
        try:
            self._container = av.open(self._sink, mode="w", format=spec.muxer, options=options)
            self._stream = self._container.add_stream(spec.codec, rate=out_rate, layout="mono")
            bitrate = _bitrate(spec.bitrate)
            if bitrate:
                self._stream.bit_rate = bitrate
        except av.FFmpegError as exc:
            raise AudioEncodingError(f"cannot set up the {fmt} encoder: {exc}") from exc
        self._pts = 0
        self._done = False
        self._lock = threading.Lock()

    def encode(self, samples: np.ndarray) -> bytes:
        """Encode `samples`; the bytes it completed (possibly none: codecs work in whole frames)."""
        if not len(samples):
            return b""
        with self._lock:
            return self._encode(samples)

    def _encode(self, samples: np.ndarray) -> bytes:
        data = np.ascontiguousarray(samples, dtype=np.float32).reshape(ENGINE_CHANNELS, -1)
        frame = av.AudioFrame.from_ndarray(data, format="flt", layout="mono")
        frame.sample_rate = self._in_rate
        frame.pts = self._pts
        self._pts += data.shape[1]
        return self._mux(frame)

    def finish(self) -> bytes:
        """Flush the codec, write the trailer; the remaining bytes."""
        with self._lock:
            tail = self._mux(None)
            self._close()
            return tail + self._sink.take()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            # Abandoning a half-written stream may fail to write its trailer: nothing of it is kept.
            with contextlib.suppress(av.FFmpegError):
                self._container.close()

    def _mux(self, frame: av.AudioFrame | None) -> bytes:
        if self._done:
            raise AudioEncodingError("the encoder is closed")
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as exc:
            raise AudioEncodingError(f"encoding failed: {exc}") from exc
        return self._sink.take()


def encode_buffered(samples: np.ndarray, in_rate: int, fmt: str, out_rate: int) -> bytes:
    """A whole utterance at once. Synchronous: run it in a worker thread."""
    encoder = StreamEncoder(fmt, in_rate, out_rate)
    try:
        return encoder.encode(samples) + encoder.finish()
    finally:
        encoder.close()


async def encode_chunks(
    chunks: AsyncIterator[np.ndarray], in_rate: int, fmt: str, out_rate: int
) -> AsyncIterator[bytes]:
    """Encode a stream chunk by chunk in the encoding pool, yielding bytes as soon as they exist."""
    loop = asyncio.get_running_loop()
    encoder = await loop.run_in_executor(_POOL, StreamEncoder, fmt, in_rate, out_rate)
    try:
        async for chunk in chunks:
            data = await loop.run_in_executor(_POOL, encoder.encode, chunk)
            if data:
                yield data
        tail = await loop.run_in_executor(_POOL, encoder.finish)
        if tail:
            yield tail
    finally:
        # Abandoned or failed: release the codec (finish() already did when the stream completed),
        # after any encode of it still running in the pool; then stop the upstream chunks.
        await loop.run_in_executor(_POOL, encoder.close)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
