"""Writing files so that readers see the whole file or none of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # what start-up sweeps treat as a write a crash interrupted


def atomic_write(path: Path, *parts: bytes) -> None:
    """Write `parts` to a temp file beside `path`, flush it to disk, and rename it into place.

    A crash leaves either the old file or the new one, plus at worst a `.tmp-*` file to sweep.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
