"""Audio post-processing: speed, resampling and encoding to the response formats.

pcm and wav are resampled in-process (soxr); mp3, opus, aac, G.711 and streamed flac at normal speed are
encoded in-process on FFmpeg's libraries (voxport.codec); buffered flac by libsndfile (with its length);
speed changes go through the ffmpeg binary (PATH, else the `imageio-ffmpeg` wheel's).
`encode` is synchronous (callers run it in a worker thread); `encode_stream` is an async iterator that
never blocks the event loop (codec work in a thread pool, or an ffmpeg subprocess on asyncio pipes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import io
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
import soundfile
import soxr

ENGINE_CHANNELS = 1
_READ_SIZE = 1 << 16
WAV_HEADER_BYTES = 44
IN_PROCESS_CODECS = frozenset({"mp3", "opus", "aac", "flac", "mulaw", "alaw"})
_COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# G.711 is a telephony codec: narrowband (8 kHz) as phone networks carry it, or 16 kHz wideband.
TELEPHONY_RATES = (8000, 16000)


@dataclass(frozen=True)
class AudioFormat:
    name: str
    content_type: str
    default_rate: int
    # Sample rates the codec accepts; None: any rate in the API's range.
    rates: tuple[int, ...] | None = None
    muxer: str | None = None  # ffmpeg output format for compressed formats
    codec: str | None = None
    bitrate: str | None = None


FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("mp3", "audio/mpeg", 48000, _COMMON_RATES, "mp3", "libmp3lame", "128k"),
    "opus": AudioFormat(
        "opus", "audio/ogg", 48000, (8000, 12000, 16000, 24000, 48000), "ogg", "libopus", "64k"
    ),
    "aac": AudioFormat("aac", "audio/aac", 48000, _COMMON_RATES, "adts", "aac", "128k"),
    "flac": AudioFormat("flac", "audio/flac", 48000, None, "flac", "flac"),
    "wav": AudioFormat("wav", "audio/wav", 48000),
    "pcm": AudioFormat("pcm", "audio/pcm", 24000),
    # Raw G.711 (no header), 8 bits a sample: what telephony providers' media streams carry.
    "mulaw": AudioFormat("mulaw", "audio/basic", 8000, TELEPHONY_RATES, "mulaw", "pcm_mulaw"),
    "alaw": AudioFormat("alaw", "audio/x-alaw-basic", 8000, TELEPHONY_RATES, "alaw", "pcm_alaw"),
}


class AudioEncodingError(RuntimeError):
    """ffmpeg failed on audio the server produced (a server-side problem)."""


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """The ffmpeg executable: PATH first, else the one shipped in the imageio-ffmpeg wheel."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise AudioEncodingError(f"no ffmpeg: put one on PATH or install imageio-ffmpeg ({exc})") from None


@functools.lru_cache(maxsize=1)
def pyav_available() -> bool:  # a declared dependency; the GPU session's carried set leaves it out
    return importlib.util.find_spec("av") is not None


def in_process(fmt: str, speed: float) -> bool:  # without PyAV: the ffmpeg binary, as for flac
    return fmt in IN_PROCESS_CODECS and speed == 1.0 and pyav_available()


def needs_ffmpeg(fmt: str, speed: float) -> bool:
    """At normal speed, wav and pcm are resampled in-process (soxr), the IN_PROCESS_CODECS encoded (codec)."""
    return speed != 1.0 or (FORMATS[fmt].muxer is not None and not in_process(fmt, speed))


def ffmpeg_available() -> bool:
    with contextlib.suppress(AudioEncodingError):
        return bool(ffmpeg_binary())
    return False


def atempo_factors(speed: float) -> list[float]:
    """Split `speed` into atempo factors each within [0.5, 2.0], whose product is `speed`."""
    factors: list[float] = []
    while speed > 2.0:
        factors.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    if abs(speed - 1.0) > 1e-9 or not factors:
        factors.append(speed)
    return factors


def to_s16le(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None, channels: int = ENGINE_CHANNELS) -> bytes:
    """A 44-byte PCM s16le WAV header. `data_bytes=None` marks the length unknown (streaming)."""
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    block_align = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def ffmpeg_command(fmt: str, in_rate: int, out_rate: int, speed: float, streaming: bool = False) -> list[str]:
    """The ffmpeg command line that turns mono f32le at `in_rate` on stdin into `fmt` on stdout.

    wav and pcm come out as raw s16le (voxport writes the WAV header itself). With `streaming`,
    muxers flush every packet so that encoded audio leaves as soon as it exists.
    """
    spec = FORMATS[fmt]
    stream = ffmpeg.input("pipe:", format="f32le", ar=in_rate, ac=ENGINE_CHANNELS)
    if speed != 1.0:
        for factor in atempo_factors(speed):
            stream = stream.filter("atempo", f"{factor:.6f}")
    if out_rate != in_rate:
        stream = stream.filter("aresample", out_rate)
    if spec.muxer is None:
        kwargs: dict = {"format": "s16le", "acodec": "pcm_s16le"}
    else:
        kwargs = {"format": spec.muxer, "acodec": spec.codec}
        if spec.bitrate:
            kwargs["audio_bitrate"] = spec.bitrate
        if spec.codec == "flac":
            kwargs["sample_fmt"] = "s16"
        if spec.muxer == "mp3":
            kwargs["write_xing"] = 0  # a pipe cannot be seeked back to fill in the Xing header
        if streaming:
            kwargs["flush_packets"] = 1
            if spec.muxer == "ogg":
                kwargs["page_duration"] = 20000  # µs: one Ogg page per 20 ms Opus packet
    stream = stream.output("pipe:", ac=ENGINE_CHANNELS, ar=out_rate, **kwargs)
    args = stream.global_args("-hide_banner", "-loglevel", "error", "-nostats").compile(cmd=ffmpeg_binary())
    return args


def encode(samples: np.ndarray, in_rate: int, fmt: str, out_rate: int, speed: float = 1.0) -> bytes:
    """Encode mono float32 `samples` at `in_rate` to `fmt` at `out_rate`, played `speed` times faster.

    Speed uses atempo (pitch kept, duration scaled by 1/speed). wav and pcm are s16le mono; wav
    carries exact sizes in its header. Synchronous: run it in a worker thread.
    """
    if fmt == "flac":
        # ffmpeg writing FLAC to a pipe cannot seek back to fill in STREAMINFO's total sample count, so
        # players would see no duration: libsndfile writes it into a seekable buffer instead.
        pcm = np.frombuffer(encode(samples, in_rate, "pcm", out_rate, speed), dtype="<i2")
        out = io.BytesIO()
        soundfile.write(out, pcm, out_rate, format="FLAC", subtype="PCM_16")
        return out.getvalue()
    if in_process(fmt, speed):
        from voxport.codec import encode_buffered  # it imports this module for FORMATS

        return encode_buffered(samples, in_rate, fmt, out_rate)
    if needs_ffmpeg(fmt, speed):
        proc = subprocess.run(
            ffmpeg_command(fmt, in_rate, out_rate, speed),
            input=np.ascontiguousarray(samples, dtype="<f4").tobytes(),
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", "replace").strip()[-500:]
            raise AudioEncodingError(f"ffmpeg exited with {proc.returncode}: {detail}")
        body = proc.stdout
    else:
        if out_rate != in_rate:
            samples = soxr.resample(samples, in_rate, out_rate, quality="HQ")
        body = to_s16le(samples)
    return wav_header(out_rate, len(body)) + body if fmt == "wav" else body


async def encode_stream(
    chunks: AsyncIterator[np.ndarray], in_rate: int, fmt: str, out_rate: int, speed: float = 1.0
) -> AsyncIterator[bytes]:
    """Encode an async stream of float32 chunks, yielding encoded bytes as soon as they exist.

    One encoder (a codec context here, or an ffmpeg process) lives for the whole stream, so the
    concatenated output is one valid file (one header, no gaps at chunk joins). wav starts with a header
    of unknown length (0xFFFFFFFF). Leaving the iteration early stops the encoder and the upstream chunks.
    """
    if in_process(fmt, speed):
        from voxport.codec import encode_chunks  # it imports this module for FORMATS

        async for data in encode_chunks(chunks, in_rate, fmt, out_rate):
            yield data
        return
    if fmt == "wav":
        yield wav_header(out_rate, None)
    if not needs_ffmpeg(fmt, speed):
        # A streaming resampler keeps its filter state across chunks: no clicks at the joins, and
        # each chunk's samples leave as soon as they arrive (milliseconds of work per 0.16 s chunk).
        resampler = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
            if out_rate != in_rate
            else None
        )
        async for chunk in chunks:
            out = resampler.resample_chunk(chunk) if resampler else chunk
            if len(out):
                yield to_s16le(out)
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield to_s16le(tail)
        return

    proc = await asyncio.create_subprocess_exec(
        *ffmpeg_command(fmt, in_rate, out_rate, speed, streaming=True),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        try:
            async for chunk in chunks:
                stdin.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
                await stdin.drain()
        finally:
            stdin.close()

    feeder = asyncio.create_task(feed())
    errors = asyncio.create_task(stderr.read())
    try:
        while data := await stdout.read(_READ_SIZE):
            yield data
        await feeder  # re-raises an upstream failure
        code = await proc.wait()
        if code != 0:
            detail = (await errors).decode("utf-8", "replace").strip()[-500:]
            raise AudioEncodingError(f"ffmpeg exited with {code}: {detail}")
    finally:
        if proc.returncode is None:
            proc.kill()
        for task in (feeder, errors):
            if not task.done():
                task.cancel()
        await asyncio.gather(feeder, errors, return_exceptions=True)
        if proc.returncode is None:
            await proc.wait()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class AudioDecodeError(ValueError):
    """An upload that is not audio ffmpeg can decode."""


def decode_file(path: str, rate: int, max_seconds: float) -> np.ndarray:
    """Decode any audio file ffmpeg reads to mono float32 at `rate` (stereo is mixed down), reading at
    most `max_seconds` plus a little, so that an overlong upload is recognised without decoding it all.
    Synchronous: run it in a worker thread."""
    proc = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", path,
         "-t", f"{max_seconds + 0.5:.3f}", "-vn", "-ac", "1", "-ar", str(rate), "-f", "f32le", "pipe:"],
        capture_output=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout:
        raise AudioDecodeError("the file is not audio that can be decoded")
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


def write_wav(path: str, samples: np.ndarray, rate: int) -> None:
    pcm = to_s16le(samples)
    Path(path).write_bytes(wav_header(rate, len(pcm)) + pcm)
