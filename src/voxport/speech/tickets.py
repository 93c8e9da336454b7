"""The registry of requests in flight: each one's cancel switch and what it has produced so far, so
that requests can be counted, logged and cancelled by id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from voxport.errors import VoxportError

T = TypeVar("T")


@dataclass(eq=False)  # identity: two jobs of one request id are different jobs
class RequestTicket:
    """One speech request: its cancel switch, and what it has produced so far. The API layer makes one
    per request (so that the access log can read it); the service fills it in."""

    request_id: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    tenant: str = ""  # whose voices it may use and who may cancel it ('': every tenant's; voxport.tenants)
    cache_scope: str = ""  # its cache partition ('': the shared one)
    started: float = field(default_factory=time.perf_counter)  # arrival; first audio counts from here
    opened: bool = False  # registered in flight (its request got past validation)
    first_audio: float | None = None  # seconds from start to the first audio chunk
    samples: int = 0  # engine-rate samples produced
    sample_rate: int = 0
    input_tokens: int = 0
    output_steps: int = 0
    cache: str = "-"
    voice_kind: str = "-"
    chars: int = 0
    text: str = ""  # only filled in when log_request_text is on
    warnings: tuple[str, ...] = ()  # what the request asked for that was ignored (SSML elements)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_steps,
            "total_tokens": self.input_tokens + self.output_steps,
        }

    def log_fields(self) -> dict[str, Any]:
        """What the request's single log line says about the speech (never its text)."""
        if not self.opened:
            return {}
        return {
            "voice_kind": self.voice_kind,
            "chars": self.chars,
            "audio_s": round(self.samples / self.sample_rate, 3) if self.sample_rate else 0,
            "first_audio_ms": round(self.first_audio * 1000) if self.first_audio is not None else "-",
            "cache": self.cache,
            "cancelled": self.cancel.is_set(),
        }


class TicketRegistry:
    def __init__(self, on_cancelled: Callable[[], None] | None = None,
                 on_in_flight: Callable[[int], None] | None = None):  # fmt: skip
        self.active: dict[str, list[RequestTicket]] = {}
        self.cancelled_total = 0
        self.in_flight = 0  # tickets in `active`
        self._on_cancelled = on_cancelled
        self._on_in_flight = on_in_flight  # told each new count (the in-flight gauge)

    def _count(self, change: int) -> None:
        self.in_flight += change
        if self._on_in_flight is not None:
            self._on_in_flight(self.in_flight)

    def open(self, job: RequestTicket) -> None:
        job.opened = True
        self.active.setdefault(job.request_id, []).append(job)
        self._count(1)

    def close(self, job: RequestTicket) -> None:
        """Unregister a job (once; later calls do nothing) and count it if it was cancelled."""
        jobs = self.active.get(job.request_id, [])
        if job not in jobs:
            return
        jobs.remove(job)
        if not jobs:
            del self.active[job.request_id]
        self._count(-1)
        if job.cancel.is_set():
            self.cancelled_total += 1
            if self._on_cancelled is not None:
                self._on_cancelled()

    def cancel(self, request_id: str, viewer: str = "") -> bool:
        """Cancel the requests in flight under `request_id` that `viewer` may see (another tenant's are
        as unknown as no request)."""
        jobs = [job for job in self.active.get(request_id, []) if not viewer or job.tenant == viewer]
        for job in jobs:
            job.cancel.set()
        return bool(jobs)


async def with_deadline(work: Awaitable[T], seconds: float) -> T:
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise VoxportError(
            "timeout", f"The request did not finish within {seconds:.0f}s.", code="timeout"
        ) from None
