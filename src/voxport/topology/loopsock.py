"""A plain (synchronous) ZMQ socket driven by the event loop: its file descriptor is watched with the
loop's `add_reader`, and every message waiting is read at once, without blocking, when it signals.

Why not `zmq.asyncio`: its sockets make a Future, a poll and a few callbacks for each message sent and
received. With one message per engine step per worker that was a measurable share of the engine host's
and each worker's CPU (py-spy: `_AsyncSocket._handle_recv`, `_add_send_event`,
`_schedule_remaining_events`). Here a send is one non-blocking call (no high-water mark: it never waits)
and a read is one call per message.

ZMQ's descriptor is edge-triggered and is also consumed by sends: after a send, and after each drain, the
socket's own EVENTS say whether messages wait, and a drain is scheduled if they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger("voxport.topology")

_BATCH = 512  # messages read per turn of the loop at most: a flood never starves the rest of the loop


class LoopSocket:
    def __init__(self, sock: zmq.Socket, on_message: Callable[[list[memoryview]], None]):
        self.sock = sock
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.getsockopt(zmq.FD), self._drain)
        self._soon()  # anything that arrived before the reader was added

    def send(self, frames: list[Any], copy: bool = True) -> None:
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:  # no high-water mark is set, so not expected: wait rather than lose it
            self.sock.send_multipart(frames, copy=copy)
        self._soon()

    def unread(self) -> bool:
        """Whether messages wait (the peer is alive; this side is behind)."""
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.getsockopt(zmq.FD))
        self.sock.close(0)

    def _soon(self) -> None:
        if not self._scheduled and self._loop is not None and self.unread():
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self.sock.closed:
            return
        sock = self.sock
        for _ in range(_BATCH):
            try:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than a failed read
                    break
                # Not copied out of ZMQ: each frame's buffer is ZMQ's own message, kept alive by the
                # views on it, and never reused (the pitfall is on the sending side, voxport.topology.wire).
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:  # closed under us while stopping
                log.debug("socket read ended: %s", exc)
                return
            try:
                self._on_message([frame.buffer for frame in frames])
            except Exception:  # noqa: BLE001 - one bad message never stops the reading
                log.exception("a message from the other side could not be handled")
        self._soon()
