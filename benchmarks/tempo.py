"""Why `speed` is applied per segment (voxport/tempo.py), and what it costs. Rerun on a quiet machine:

    python benchmarks/tempo.py

1. Drift: noise bursts separated by exact silences, stretched whole (one atempo over the utterance, as
   voxport did before) and segment by segment (as it does now); each silence's decoded edges are compared
   with where `t / speed` (whole) or the counted segment lengths (per segment) put them.
2. Cost: CPU seconds per second of 48 kHz audio for `Tempo` fed 0.16 s chunks (PyAV, in-process) and for
   the ffmpeg binary over the whole signal.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np

from voxport.audio import atempo_factors, ffmpeg_binary
from voxport.tempo import Tempo, stretch

RATE = 48000
CHUNK = 7680  # one engine step, 0.16 s


def _edges(audio: np.ndarray, shortest: float = 0.1) -> list[tuple[float, float]]:
    window = RATE // 200
    frames = len(audio) // window
    rms = np.sqrt(np.mean(np.square(audio[: frames * window].reshape(frames, window)), axis=1))
    quiet = [*(rms < 0.02 * float(np.sqrt(np.mean(np.square(audio))))), False]
    runs, begin = [], None
    for index, still in enumerate(quiet):
        if still and begin is None:
            begin = index
        elif not still and begin is not None:
            if (index - begin) * window / RATE >= shortest:
                runs.append((begin * window / RATE, index * window / RATE))
            begin = None
    return runs


def _ffmpeg(audio: np.ndarray, speed: float) -> np.ndarray:
    filters = ",".join(f"atempo={f:.6f}" for f in atempo_factors(speed))
    fmt = ["-f", "f32le", "-ar", str(RATE), "-ac", "1"]
    command = [ffmpeg_binary(), "-loglevel", "error", *fmt, "-i", "pipe:", "-af", filters, *fmt, "pipe:"]
    out = subprocess.run(command, input=audio.astype("<f4").tobytes(), capture_output=True, check=True)
    return np.frombuffer(out.stdout, dtype="<f4")


def _worst(found: list[tuple[float, float]], expected: list[tuple[float, float]]) -> float:
    pairs = zip(found, expected, strict=True)
    return max(abs(a - b) for edges, marks in pairs for a, b in zip(edges, marks, strict=True))


def drift() -> None:
    rng = np.random.default_rng(0)
    pieces = [
        (rng.standard_normal(int(s * RATE)) * 0.1).astype(np.float32) for s in (3.8, 1.9, 1.9, 4.0, 2.0)
    ]
    gap = np.zeros(int(0.5 * RATE), np.float32)
    print("speed  worst edge error, whole-signal atempo  |  per segment (ms)")
    for speed in (0.5, 0.75, 1.25, 1.5, 2.0, 3.0):
        whole_in = np.concatenate([x for p in pieces for x in (p, gap)][:-1])
        marks, pos = [], 0
        for p in pieces[:-1]:
            pos += len(p)
            marks.append((pos / RATE / speed, (pos + len(gap)) / RATE / speed))
            pos += len(gap)
        whole = _edges(_ffmpeg(whole_in, speed))
        err_whole = _worst(whole, marks)
        out, marks, pos = [], [], 0
        for p in pieces:
            s = stretch(p, RATE, speed)
            out += [s, gap]
            marks.append((pos + len(s)) / RATE)
            pos += len(s) + len(gap)
        per = _edges(np.concatenate(out[:-1]))
        marks = [(m, m + len(gap) / RATE) for m in marks[:-1]]
        err_per = _worst(per, marks)
        print(f"{speed:5.2f}  {err_whole * 1000:6.0f}  |  {err_per * 1000:6.0f}")


def cost() -> None:
    audio = (np.random.default_rng(1).standard_normal(RATE * 20) * 0.1).astype(np.float32)
    print("speed  Tempo (PyAV, 0.16 s chunks)  |  ffmpeg binary, whole: CPU s per audio s")
    for speed in (0.5, 1.5, 2.0):
        started = time.process_time()
        tempo = Tempo(RATE, speed)
        for i in range(0, len(audio), CHUNK):
            tempo.push(audio[i : i + CHUNK])
        tempo.flush()
        pyav = (time.process_time() - started) / 20
        started = time.perf_counter()  # a child process: wall time, on an otherwise idle machine
        _ffmpeg(audio, speed)
        binary = (time.perf_counter() - started) / 20
        print(f"{speed:5.2f}  {pyav:.4f}  |  {binary:.4f} (wall)")


if __name__ == "__main__":
    drift()
    cost()
