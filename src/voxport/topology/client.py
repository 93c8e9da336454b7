"""A worker's link to the engine host: one DEALER socket, a reader that routes each reply to its waiter
and each Step's samples to their streams' collectors, and a pinger that keeps both sides' view of the
other current (a host silent for LOST_S, or back with a new epoch, fails everything in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from voxport.engine.base import EngineInfo, EngineUnavailable, GenerationStats
from voxport.topology import wire
from voxport.topology.loopsock import LoopSocket

log = logging.getLogger("voxport.topology")


class Collector:
    """One stream's single slot: samples that arrive while the consumer is busy are merged into the next
    chunk it takes, so a slow client costs one growing array, never a queue of messages."""

    def __init__(self, stats: GenerationStats):
        self.stats = stats
        self._parts: list[np.ndarray] = []
        self._error: Exception | None = None
        self.done = False
        self._ready = asyncio.Event()

    def put(self, samples: np.ndarray, out: wire.Out) -> None:
        if len(samples):
            self._parts.append(samples)
        self.stats.input_tokens, self.stats.steps = out.input_tokens, out.steps
        if out.end:
            self.finish(wire.raised(out.error) if out.error is not None else None)
        self._ready.set()

    def finish(self, error: Exception | None) -> None:
        if not self.done:
            self.done, self._error = True, error
        self._ready.set()

    async def take(self) -> np.ndarray | None:
        """Everything that arrived since the last take, merged; None at the end."""
        while not self._parts and not self.done:
            self._ready.clear()
            await self._ready.wait()
        if self._parts:
            parts, self._parts = self._parts, []
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self._error is not None:
            raise self._error
        return None


class HostLink:
    def __init__(self, address: str, identity: str):
        self.address = address
        self.identity = identity
        self.epoch = ""
        self.up = False  # a Pong came within LOST_S
        self.engine_ready = False
        self.capacity = 0
        self.info: EngineInfo | None = None
        self.generating = self.queued = 0  # global, as of the last Pong
        self.voices: set[str] = set()  # keys encoded on the current engine host
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future] = {}
        self._streams: dict[int, Collector] = {}
        self._heard = 0.0
        self._first = asyncio.Event()
        self.on_seek: Callable[[str, str], bool] = lambda _request_id, _viewer: False  # cancels one here
        self.on_seek_job: Callable[[str], bool] = lambda _job_id: False  # stops a job this worker runs
        self._tasks: list[asyncio.Task] = []
        self.sock: LoopSocket | None = None
        self._monitor: LoopSocket | None = None

    @property
    def ready(self) -> bool:
        return self.up and self.engine_ready

    async def start(self) -> None:
        """Connect, and return once the host has answered (its engine may still be loading)."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity.encode())
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        # Only EVENT_DISCONNECTED is asked for: the engine host's end closed (it died, or stopped).
        self._monitor = LoopSocket(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED), self._disconnected)
        sock.connect(self.address)
        self.sock = LoopSocket(sock, self._read)
        self.sock.start()
        self._monitor.start()
        self._tasks = [asyncio.ensure_future(self._ping())]
        await self._first.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lost("the worker is stopping")
        for sock in (self._monitor, self.sock):
            if sock is not None:
                sock.close()

    def send(self, message: Any) -> None:
        assert self.sock is not None
        self.sock.send([wire.pack(message)])

    def new_id(self) -> int:
        return next(self._ids)

    async def call(self, id_: int, message: Any) -> Any:
        """Send a request and wait for its one reply (Granted, Refused, Encoded or Failed)."""
        if not self.up:
            raise EngineUnavailable("the engine host is not reachable")
        future = self._waiters[id_] = asyncio.get_running_loop().create_future()
        try:
            self.send(message)
            return await future
        finally:
            self._waiters.pop(id_, None)

    async def seek(self, request_id: str, viewer: str = "", job: bool = False) -> bool:
        """Cancel a request another worker serves (one `viewer` may see), or stop the work of a job
        another worker runs (`job`: cancelled in the store already); whether one did."""
        if not self.up:
            return False
        id_ = self.new_id()
        reply = await self.call(id_, wire.Seek(id_, request_id, viewer, job))
        return isinstance(reply, wire.Sought) and reply.found

    def open(self, id_: int, stats: GenerationStats) -> Collector:
        collector = self._streams[id_] = Collector(stats)
        return collector

    def closed(self, id_: int) -> None:
        self._streams.pop(id_, None)

    # -- background -------------------------------------------------------------------------------

    async def _ping(self) -> None:
        while True:
            self.send(wire.Ping())
            await asyncio.sleep(wire.PING_S)
            if self.up and time.monotonic() - self._heard > wire.LOST_S and not self.sock.unread():
                log.warning("the engine host stopped answering: requests fail until it is back")
                self._lost("the engine host stopped answering")

    def _disconnected(self, _event: list[memoryview]) -> None:
        """The engine host's end of the connection closed (it died, or stopped): fail at once."""
        if self.up:
            log.warning("the engine host went away: requests fail until it is back")
            self._lost("the engine host went away")

    def _lost(self, why: str) -> None:
        """Everything in flight fails: the host that held it is gone (or this worker is stopping)."""
        self.up = self.engine_ready = False
        self.voices.clear()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(EngineUnavailable(why))
        for collector in self._streams.values():
            collector.finish(EngineUnavailable(why))
        self._streams.clear()

    def _read(self, parts: list[memoryview]) -> None:
        header, *frames = parts
        self._heard = time.monotonic()
        try:
            message = wire.unpack_to_worker(header)
        except Exception:  # noqa: BLE001 - never fatal
            log.warning("dropped a malformed message from the engine host")
            return
        if isinstance(message, wire.Step):
            parts = wire.split_samples(frames[0], message.streams)
            for out, samples in zip(message.streams, parts, strict=True):
                collector = self._streams.get(out.id)
                if collector is not None:
                    collector.put(samples, out)
                    if out.end:
                        self._streams.pop(out.id, None)
        elif isinstance(message, wire.Pong):
            self._pong(message)
        elif isinstance(message, wire.Seek) and message.job:  # a job cancelled elsewhere: run here?
            self.send(wire.Sought(message.id, self.on_seek_job(message.request_id)))
        elif isinstance(message, wire.Seek):  # another worker's cancel: is the request here?
            self.send(wire.Sought(message.id, self.on_seek(message.request_id, message.viewer)))
        else:
            waiter = self._waiters.get(message.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)

    def _pong(self, pong: wire.Pong) -> None:
        if self.epoch and pong.epoch != self.epoch and self.up:
            log.warning("the engine host restarted: requests in flight fail")
            self._lost("the engine host restarted")
        if pong.epoch != self.epoch:
            log.info("engine host %s answered", pong.epoch)
        self._heard = time.monotonic()
        self.epoch, self.up, self.engine_ready = pong.epoch, True, pong.ready
        self.capacity, self.generating, self.queued = pong.capacity, pong.generating, pong.queued
        if pong.info is not None:
            self.info = pong.info
        self._first.set()
