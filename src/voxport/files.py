"""Writing files so that readers see the whole file or none of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"  # what start-up sweeps treat as a write a crash interrupted


def atomic_write(path: Path, *parts: bytes) -> None:
    """Write `parts` to a temp file beside `path`, flush it to disk, and rename it into place.

    A crash leaves either the old file or the new one, plus at worst a `.tmp-*` file to sweep.
    """
    with atomic_writer(path) as handle:
        for part in parts:
            handle.write(part)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """`atomic_write` for a file written piece by piece: a seekable handle on the temp file, flushed to
    disk and renamed into place when the block ends without an error, removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
