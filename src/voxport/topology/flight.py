"""Single flight across `--workers` without Redis: the engine host says which worker produces each cache
key, and the others wait for it and read its result from the disk cache that every worker shares.

Within a worker, identical requests coalesce first (voxport.singleflight); only that worker's leader asks
the host (`Flight`, the disk cache's `across`). The host (`Leads`) answers Claimed(lead) at once when
nobody holds the key; otherwise it answers Claimed(look again) when the holder sends Done or its worker is
gone. A worker told to look again reads the cache: the entry, as a result it did not produce, or none (the
holder failed, or its worker died), and then it claims again. Coordination is a help, never a condition:
with the engine host away (restarting, unreachable) a worker produces by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from voxport.cache import CachedAudio
from voxport.engine.base import EngineUnavailable
from voxport.singleflight import Produce, SharedResult
from voxport.topology import wire
from voxport.topology.client import HostLink


class Flight:
    """A worker's side: `across` for its AudioCache."""

    def __init__(self, link: HostLink, look: Callable[[str], Awaitable[CachedAudio | None]], wait_s: float):
        self.link = link
        self.look = look  # the shared disk cache, without counting hits and misses
        self.wait_s = wait_s  # the longest this worker waits for another's result before it produces

    async def __call__(self, key: str, produce: Produce) -> tuple[Any, bool]:
        deadline = time.monotonic() + self.wait_s
        while (left := deadline - time.monotonic()) > 0:
            link = self.link
            epoch, id_ = link.epoch, link.new_id()
            try:
                reply = await asyncio.wait_for(link.call(id_, wire.Claim(id_, epoch, key)), left)
            except (EngineUnavailable, asyncio.TimeoutError):  # not TimeoutError itself before 3.11
                break  # the host is away or the holder is slow: this worker produces
            if not isinstance(reply, wire.Claimed):
                break  # Failed: the engine host restarted since `epoch`
            if reply.lead:
                return await self._lead(key, epoch, produce)
            if (found := await self.look(key)) is not None:
                return SharedResult(found.payload, found.meta), False
            # Not there: its holder failed or died. Claim again (one of the waiters leads).
        return await produce(), True

    async def _lead(self, key: str, epoch: str, produce: Produce) -> tuple[Any, bool]:
        """Produce (the result is stored by `produce`), then let the waiters look. Looked up first: the
        last holder may have stored it between this worker's miss and its claim."""
        try:
            if (found := await self.look(key)) is not None:
                return SharedResult(found.payload, found.meta), False
            return await produce(), True
        finally:
            if self.link.up and self.link.epoch == epoch:  # a new host never heard of this claim
                with contextlib.suppress(zmq.ZMQError):
                    self.link.send(wire.Done(key))


class Leads:
    """The engine host's side: the worker that holds each key, and the claims that wait for it."""

    def __init__(self, send: Callable[[bytes, Any], None]):
        self._send = send
        self.holders: dict[str, bytes] = {}
        self.waiting: dict[str, list[tuple[bytes, int]]] = {}

    def handle(self, identity: bytes, message: wire.Claim | wire.Done) -> None:
        key = message.key
        if isinstance(message, wire.Done):
            if self.holders.get(key) == identity:  # not a Done meant for an earlier holder
                self._release(key)
        elif key in self.holders:
            self.waiting.setdefault(key, []).append((identity, message.id))
        else:
            self.holders[key] = identity
            self._send(identity, wire.Claimed(message.id, True))

    def drop(self, identity: bytes) -> None:
        """A worker is gone: the keys it held are released (their waiters look, then one leads), and its
        own claims stop waiting."""
        for key in [k for k, holder in self.holders.items() if holder == identity]:
            self._release(key)
        for key in list(self.waiting):
            self.waiting[key] = [w for w in self.waiting[key] if w[0] != identity]
            if not self.waiting[key]:
                del self.waiting[key]

    def _release(self, key: str) -> None:
        del self.holders[key]
        for identity, id_ in self.waiting.pop(key, []):
            self._send(identity, wire.Claimed(id_, False))
