"""Admission: a bounded number of generations at once, a bounded queue behind them, and a refusal at
once (kind `busy`) beyond that. The limits come in as constructor arguments: whoever sizes them
(`Settings.admission`, from the settings or the engine's capacity) stays outside this module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from voxport.errors import VoxportError


class Slot:
    """A held generation slot; `release` is safe to call more than once."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release()


class Admission:
    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        engine_batch: int = 1,
        on_reject: Callable[[], None] | None = None,
    ):
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.engine_batch = engine_batch  # what the engine runs at once (reported, not enforced here)
        self._on_reject = on_reject
        self._slots = asyncio.Semaphore(max_concurrent)
        self.generating = 0
        self.queued = 0
        # Told of each request that asks for a slot, before it waits (job segments yield to it at once).
        self.on_arrival: list[Callable[[], None]] = []

    @property
    def load_score(self) -> float:
        """0 when idle, 1 when every slot and queue place is taken: for an upstream router."""
        capacity = self.max_concurrent + self.max_queue
        return round(min(1.0, (self.generating + self.queued) / capacity), 3)

    async def acquire(self) -> Slot:
        """Wait for a slot, or refuse at once when the slots and the queue are all taken."""
        if self.generating >= self.max_concurrent and self.queued >= self.max_queue:
            if self._on_reject is not None:
                self._on_reject()
            raise VoxportError(
                "busy",
                f"The server is at capacity ({self.max_concurrent} generating, "
                f"{self.max_queue} waiting). Retry shortly.",
                code="rate_limit_exceeded",
                retry_after=1,
            )
        for listener in self.on_arrival:
            listener()
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.generating += 1
        return Slot(self)

    def _release(self) -> None:
        self.generating -= 1
        self._slots.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        held = await self.acquire()
        try:
            yield
        finally:
            held.release()
