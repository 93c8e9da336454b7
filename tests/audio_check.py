"""Decode what the server returned with real ffmpeg, independently of voxport's encoder."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import numpy as np

from voxport.audio import ffmpeg_binary


@dataclass
class Decoded:
    codec: str
    sample_rate: int
    channels: int
    samples: np.ndarray  # float32, mono

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.samples)))) if len(self.samples) else 0.0


_STREAM = re.compile(r"Audio: (\w+).*?, (\d+) Hz, (mono|stereo|\d+ channels)")


def decode(data: bytes, fmt: str, pcm_rate: int = 24000) -> Decoded:
    """Decode `data` with ffmpeg to float32 at the stream's own rate; report what the stream says."""
    if fmt == "pcm":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        return Decoded("pcm_s16le", pcm_rate, 1, samples)
    # Raw G.711 has no header: its encoding and rate are told to ffmpeg, which decodes it (a maintained
    # decoder, not ours).
    raw = ["-f", fmt, "-ar", str(pcm_rate), "-ac", "1"] if fmt in ("mulaw", "alaw") else []
    proc = subprocess.run(
        [
            ffmpeg_binary(),
            "-hide_banner",
            "-nostdin",
            *raw,
            "-i",
            "pipe:",
            "-f",
            "f32le",
            "-acodec",
            "pcm_f32le",
            "pipe:",
        ],
        input=data,
        capture_output=True,
        check=False,
    )
    log = proc.stderr.decode(errors="replace")
    match = _STREAM.search(log)
    assert proc.returncode == 0 and match, f"ffmpeg could not decode the {fmt} body:\n{log[-2000:]}"
    codec, rate, layout = match.group(1), int(match.group(2)), match.group(3)
    channels = {"mono": 1, "stereo": 2}.get(layout) or int(layout.split()[0])
    samples = np.frombuffer(proc.stdout, dtype="<f4")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return Decoded(codec, rate, channels, samples)
