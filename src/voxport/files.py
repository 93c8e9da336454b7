"""Writing files so that readers see the whole file or none of it, and clearing what stands in a
file's way without following a symlink out of the data dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
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


def lstat_is(path: Path, kind: Callable[[int], bool]) -> bool:
    """Whether `path` itself (not what a symlink points to) is of that kind (stat.S_ISDIR, S_ISREG)."""
    try:
        return kind(path.lstat().st_mode)
    except OSError:
        return False


def discard(path: Path) -> None:
    """Remove what is at `path`, a directory included, never following a symlink."""
    if lstat_is(path, stat.S_ISDIR):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def clear_the_way(path: Path) -> None:
    """Before an entry is written: its subdirectory a real one, and nothing but a file at its path."""
    if path.parent.is_symlink() or (path.parent.exists() and not lstat_is(path.parent, stat.S_ISDIR)):
        discard(path.parent)
    if (path.exists() or path.is_symlink()) and not lstat_is(path, stat.S_ISREG):
        discard(path)
