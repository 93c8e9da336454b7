"""A job's work on disk: one float32 file per finished segment, then its encoded audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from voxport.files import TEMP_PREFIX, atomic_write


class SegmentFiles:
    """A job's finished segments, one float32 file each (engine rate, mono), and its final audio.

    A segment file appears whole or not at all (atomic rename); the segments done are the files present
    from the first on. The encoded audio is written the same way once every segment exists.
    """

    def __init__(self, root: Path):
        self.root = root

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def segment_path(self, job_id: str, index: int) -> Path:
        return self.dir(job_id) / f"segment-{index:06d}.f32"

    def audio_path(self, job_id: str) -> Path:
        return self.dir(job_id) / "audio"

    def write_segment(self, job_id: str, index: int, audio: np.ndarray) -> None:
        atomic_write(self.segment_path(job_id, index), np.asarray(audio, dtype="<f4").tobytes())

    def read_segment(self, job_id: str, index: int) -> np.ndarray:
        return np.frombuffer(self.segment_path(job_id, index).read_bytes(), dtype="<f4").astype(np.float32)

    def done(self, job_id: str, total: int) -> tuple[int, int]:
        """(segments finished in order from the first, their samples)."""
        count = samples = 0
        while count < total:
            path = self.segment_path(job_id, count)
            if not path.exists():
                break
            samples += path.stat().st_size // 4
            count += 1
        return count, samples

    def write_audio(self, job_id: str, data: bytes) -> None:
        atomic_write(self.audio_path(job_id), data)

    def drop_segments(self, job_id: str) -> None:
        for path in self.dir(job_id).glob("segment-*"):
            path.unlink(missing_ok=True)
        for path in self.dir(job_id).glob(f"{TEMP_PREFIX}*"):
            path.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.dir(job_id), ignore_errors=True)
