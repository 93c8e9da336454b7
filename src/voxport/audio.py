"""Audio post-processing: speed, resampling and encoding to the response formats, through ffmpeg.

The ffmpeg binary comes from PATH, else from the `imageio-ffmpeg` wheel, so a pip install alone
gives a working server. Every function here is synchronous and CPU-bound: callers run them in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import functools
import shutil
import struct
from dataclasses import dataclass

import ffmpeg
import numpy as np

ENGINE_CHANNELS = 1
_COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


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
}


class AudioEncodingError(RuntimeError):
    """ffmpeg failed on audio the server produced (a server-side problem)."""


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """The ffmpeg executable: PATH first, else the one shipped in the imageio-ffmpeg wheel."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


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


def _run_ffmpeg(samples: np.ndarray, in_rate: int, out_rate: int, speed: float, output_kwargs: dict) -> bytes:
    stream = ffmpeg.input("pipe:", format="f32le", ar=in_rate, ac=ENGINE_CHANNELS)
    if speed != 1.0:
        for factor in atempo_factors(speed):
            stream = stream.filter("atempo", f"{factor:.6f}")
    if out_rate != in_rate:
        stream = stream.filter("aresample", out_rate)
    stream = stream.output("pipe:", ac=ENGINE_CHANNELS, ar=out_rate, **output_kwargs)
    try:
        out, _ = stream.global_args("-hide_banner", "-loglevel", "error", "-nostats").run(
            cmd=ffmpeg_binary(),
            input=np.ascontiguousarray(samples, dtype="<f4").tobytes(),
            capture_stdout=True,
            capture_stderr=True,
        )
    except ffmpeg.Error as exc:
        detail = (exc.stderr or b"").decode("utf-8", "replace").strip()[-500:]
        raise AudioEncodingError(f"ffmpeg failed: {detail}") from exc
    return out


def encode(samples: np.ndarray, in_rate: int, fmt: str, out_rate: int, speed: float = 1.0) -> bytes:
    """Encode mono float32 `samples` at `in_rate` to `fmt` at `out_rate`, played `speed` times faster.

    Speed uses atempo (pitch kept, duration scaled by 1/speed). wav and pcm are s16le mono; wav
    carries exact sizes in its header.
    """
    spec = FORMATS[fmt]
    if spec.muxer is None:  # raw s16le, wrapped in a header for wav
        if speed == 1.0 and out_rate == in_rate:
            pcm = to_s16le(samples)
        else:
            pcm = _run_ffmpeg(samples, in_rate, out_rate, speed, {"format": "s16le", "acodec": "pcm_s16le"})
        return wav_header(out_rate, len(pcm)) + pcm if fmt == "wav" else pcm
    kwargs: dict = {"format": spec.muxer, "acodec": spec.codec}
    if spec.bitrate:
        kwargs["audio_bitrate"] = spec.bitrate
    if spec.muxer == "mp3":
        kwargs["write_xing"] = 0  # a pipe cannot be seeked back to fill in the Xing header
    return _run_ffmpeg(samples, in_rate, out_rate, speed, kwargs)
