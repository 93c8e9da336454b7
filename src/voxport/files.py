"""Writing files so that readers see the whole file or none of it, and clearing what stands in a
file's way without following a symlink out of the data dir."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

TEMP_PREFIX = ".tmp-"  # what start-up sweeps treat as a write a crash interrupted
# A change within this long of a read may carry the mtime the read saw (mtimes are as coarse as the
# kernel's tick, a second or two on some filesystems): until then, what was read is read again.
RACY_NS = 2_000_000_000

T = TypeVar("T")


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


def _stamp(path: Path) -> tuple[int, int]:
    """What a change to `path` changes: its mtime (a folder's too, when a file in it is renamed in or out
    or removed), and its inode (a file replaced by a rename, as `atomic_write` does)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return 0, 0
    return found.st_ino, found.st_mtime_ns


class Watched(Generic[T]):
    """A file or folder of the data dir that other processes change (the workers of `--workers N`), read
    again when it changed. The check is one stat, on the event loop; a read runs in a thread, one at a
    time, and checks that waited for one are answered by it."""

    def __init__(self, path: Path, read: Callable[[Path], T]):
        self.path, self.read = path, read
        self.seen: tuple[int, int] | None = None  # the stamp at the last read; None: read at the next check
        self.reads = 0  # reads begun
        self.lock = asyncio.Lock()

    async def fresh(self) -> T | None:
        """`read(path)`, when the path changed since the last read (or that read cannot tell); else None."""
        if self.seen is not None and _stamp(self.path) == self.seen:
            return None
        asked = self.reads
        async with self.lock:
            if self.reads != asked:  # a read that began after this check took in what it saw
                return None
            self.reads += 1
            self.seen, data = await asyncio.to_thread(self._read)
        return data

    def _read(self) -> tuple[tuple[int, int] | None, T]:
        checked = time.time_ns()  # before the stat: a later change gets a later mtime, unless racy
        stamp = _stamp(self.path)
        return (stamp if checked - stamp[1] > RACY_NS else None), self.read(self.path)
