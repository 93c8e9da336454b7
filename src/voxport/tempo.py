"""Speed changes (atempo: tempo changed, pitch kept), applied to each synthesised segment on its own.

Why per segment: atempo (WSOLA) does not map time linearly. Within a stretched signal, content lands tens
of milliseconds off `t / speed` (up to 60 ms early at speed 0.5, measured on ffmpeg 6), so a boundary
computed from the input would be off by that much. Stretching each segment separately and counting what
comes out makes every segment boundary exact by construction (speech/timings.py); the joiner then
cross-fades the stretched segments as it does unstretched ones, and the encoder runs at speed 1.

`Tempo` runs FFmpeg's atempo in-process on a PyAV filter graph, fed chunk by chunk, so a stream keeps its
pace; without PyAV, the ffmpeg binary stretches the whole segment once it has ended. Both are CPU work:
callers run `push`/`flush` in a worker thread.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction

import numpy as np

from voxport.audio import AudioEncodingError, atempo_factors, ffmpeg_binary, pyav_available


class Tempo:
    def __init__(self, rate: int, speed: float):
        self.rate = rate
        self.speed = speed
        self.pts = 0
        self.pending: list[np.ndarray] = []  # the ffmpeg binary's input, without PyAV
        self.graph = self._graph() if pyav_available() else None

    def _graph(self):
        import av

        graph = av.filter.Graph()
        chain = [graph.add_abuffer(format="flt", sample_rate=self.rate, layout="mono",
                                   time_base=Fraction(1, self.rate))]  # fmt: skip
        chain += [graph.add("atempo", f"{factor:.6f}") for factor in atempo_factors(self.speed)]
        chain.append(graph.add("abuffersink"))
        for before, after in zip(chain, chain[1:], strict=False):
            before.link_to(after)
        graph.configure()
        return graph

    def _pull(self) -> np.ndarray:
        import av

        out = []
        while True:
            try:
                out.append(self.graph.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                break
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """The stretched audio that `chunk` completes (often less than its share, until `flush`)."""
        if self.graph is None:
            self.pending.append(chunk)
            return np.zeros(0, np.float32)
        import av

        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self.pts, Fraction(1, self.rate)
        self.pts += len(chunk)
        self.graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        """The rest of the segment's stretched audio: call once, after its last chunk."""
        if self.graph is not None:
            self.graph.push(None)
            return self._pull()
        audio = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        filters = ",".join(f"atempo={factor:.6f}" for factor in atempo_factors(self.speed))
        fmt = ["-f", "f32le", "-ar", str(self.rate), "-ac", "1"]
        command = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", *fmt, "-i", "pipe:",
                   "-filter:a", filters, *fmt, "pipe:"]  # fmt: skip
        proc = subprocess.run(command, input=audio.astype("<f4").tobytes(), capture_output=True, check=False)
        if proc.returncode != 0:
            raise AudioEncodingError(f"ffmpeg atempo exited with {proc.returncode}")
        return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def stretch(audio: np.ndarray, rate: int, speed: float) -> np.ndarray:
    """A whole segment at once (a job's, from its segment file)."""
    if speed == 1.0:
        return audio
    tempo = Tempo(rate, speed)
    head = tempo.push(audio)
    return np.concatenate([head, tempo.flush()])
