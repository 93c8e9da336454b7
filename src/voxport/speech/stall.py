"""Whether the engine has stopped answering, judged from the engine's own progress, and cleared again
when it answers.

The engine counts as stalled when generations are outstanding and none of them has produced a chunk for
`engine_stall_s` seconds of time in which the event loop was free to receive one: a stretch in which the
event loop itself was blocked (by anything, a CPU-heavy request or a slow disk) is the loop's lateness,
not the engine's, and does not count. While stalled, new requests are refused as unavailable and the
server is not ready. It clears itself when the engine produces a chunk again (an outstanding generation
moving on), or when a probe generation succeeds: a one-step generation that the watch itself runs, every
few seconds, for as long as the stall lasts, so that a server nobody sends requests to (not ready, so
sent nothing) recovers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from voxport.engine.base import Engine, SynthesisRequest
from voxport.errors import unavailable

log = logging.getLogger("voxport.engine")

# A wait that came back this much later than it asked was the event loop's lateness.
LATE_S = 0.25
# Probe generations, while stalled: one step, at most this often (and one at a time).
PROBE_INTERVAL_S = 2.0
PROBE_REQUEST = SynthesisRequest("Probe.", None, max_length=1, seed=0)


class EngineWatch:
    def __init__(self, stall_after: float, engine: Engine | None = None):
        self.stall_after = stall_after
        self.poll_s = min(1.0, stall_after / 4)  # how often a waiter looks at the clock
        self.engine = engine
        self.waiting = 0
        self.last_progress = time.monotonic()
        self.stalled = False
        self._excused_until = 0.0
        self._probe: asyncio.Task[None] | None = None

    def progress(self) -> None:
        """The engine produced a chunk."""
        self.last_progress = time.monotonic()
        if self.stalled:
            log.warning("the speech engine answers again: no longer stalled")
        self.stalled = False

    @contextlib.contextmanager
    def waiting_for_engine(self):
        if self.waiting == 0:  # the clock starts when work starts waiting, not at the last chunk ever
            self.last_progress = time.monotonic()
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    async def wait(self, step: asyncio.Future, other: asyncio.Future) -> None:
        """Until `step` (the engine's next chunk) or `other` is done; raises `unavailable` if the engine
        stalls meanwhile."""
        while True:
            asked = time.monotonic() + self.poll_s
            await asyncio.wait({step, other}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            if step.done() or other.done():
                return
            now = time.monotonic()
            if now - asked > LATE_S:
                # The loop was blocked: not the engine's time. Chunks that arrived meanwhile get their
                # turn before anything is judged.
                self._excuse(asked, now)
                continue
            self.check()

    def _excuse(self, since: float, until: float) -> None:
        since = max(since, self._excused_until)  # a stretch is excused once, however many waited
        if until > since:
            self.last_progress += until - since
            self._excused_until = until

    def check(self) -> None:
        if time.monotonic() - self.last_progress > self.stall_after:
            if not self.stalled:
                log.error("the speech engine has produced nothing for %.0f s while work waits on it: stalled",
                          self.stall_after)  # fmt: skip
            self.stalled = True
            self._start_probe()
            raise unavailable(f"The speech engine has not answered for {self.stall_after:.0f}s.")

    # -- recovery ------------------------------------------------------------------------------------

    def _start_probe(self) -> None:
        if self.engine is not None and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probing(), name="voxport-engine-probe")

    async def _probing(self) -> None:
        while self.stalled:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if not self.stalled:
                return
            if await self._probe_once():
                self.progress()

    async def _probe_once(self) -> bool:
        assert self.engine is not None
        chunks = self.engine.generate(PROBE_REQUEST)
        try:
            first = await asyncio.wait_for(chunks.__anext__(), self.stall_after)  # type: ignore[attr-defined]
            return len(first) > 0
        except (Exception, asyncio.TimeoutError):  # still stalled (or dead): try again later
            return False
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
