"""Single flight: identical concurrent requests (one cache key) produce once. Within a process the first
caller leads and the others await its result (`coalesce`); across processes the leader of each process
asks a coordinator first (`Across`): the shared Redis across replicas (voxport.cluster.cache), the engine
host across `--workers` (voxport.topology.flight). A result another process produced is read back from
the shared cache as a `SharedResult`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Produce = Callable[[], Awaitable[Any]]
# (key, produce) -> (result, True if produced here): produce, or wait for another process and read its result.
Across = Callable[[str, Produce], Awaitable[tuple[Any, bool]]]


@dataclass
class SharedResult:
    """Another process's result, read back from the shared cache: what the speech service reads of its
    own (`audio`, `meta()`)."""

    audio: bytes
    _meta: dict[str, Any]

    def meta(self) -> dict[str, Any]:
        return self._meta


class LeaderLeft(Exception):
    """The leader stopped without a result of its own (cancelled: its client went away)."""


async def coalesce(
    inflight: dict[str, asyncio.Future[Any]], key: str, lead: Callable[[], Awaitable[tuple[Any, bool]]]
) -> tuple[Any, bool]:
    """Run `lead` once per key at a time in this process: concurrent callers with the same key await the
    first caller's result. Returns (result, True if this caller produced it). A leader that is cancelled
    (its client left) fails nobody: the first waiter to wake leads in its place."""
    while (pending := inflight.get(key)) is not None:
        try:
            return await asyncio.shield(pending), False
        except LeaderLeft:
            continue
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    inflight[key] = future
    try:
        result, produced = await lead()
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else LeaderLeft())
            future.exception()  # retrieved: followers re-raise it, nobody else needs to
        raise
    else:
        future.set_result(result)
        return result, produced
    finally:
        inflight.pop(key, None)
